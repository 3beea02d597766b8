// A CONNECT relay whose data path is a BPF sockmap verdict program: the prototype that measured
// whether taking the proxy's thread out of the tunnel's data path would beat splice
// (benches/load/sockmap.sh runs it; the figures are in RESULTS.md). Not portcullis code.
//
// One tunnel at a time, loopback, IPv4: reads the CONNECT head, dials the origin, puts both
// sockets in a SOCKMAP (upstream at key 1 first, so that nothing the client sends is redirected
// to an empty slot) and only then answers 200, so that nothing the client sends after it is left
// in a queue nobody reads. The map's sk_skb verdict program sends every skb that arrives on one
// socket out of the other: the bytes never reach user space. It waits for either side to hang
// up (POLLRDHUP), takes both out of the map and closes them. Needs CAP_BPF and CAP_NET_ADMIN
// (root) and kernel >= 5.13 (BPF_SK_SKB_VERDICT).
//
//   sockmap_relay LISTEN_PORT ORIGIN_PORT
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static long bpf(int cmd, union bpf_attr *a) { return syscall(__NR_bpf, cmd, a, sizeof(*a)); }
#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})

static int map_set(int map, unsigned key, int fd) {
    union bpf_attr a;
    unsigned v = (unsigned)fd;
    memset(&a, 0, sizeof a);
    a.map_fd = map, a.key = (unsigned long)&key, a.value = (unsigned long)&v, a.flags = BPF_ANY;
    return (int)bpf(BPF_MAP_UPDATE_ELEM, &a);
}

static void map_clear(int map, unsigned key) {
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_fd = map, a.key = (unsigned long)&key;
    bpf(BPF_MAP_DELETE_ELEM, &a);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fputs("usage: sockmap_relay LISTEN_PORT ORIGIN_PORT\n", stderr);
        return 2;
    }
    int lport = atoi(argv[1]), oport = atoi(argv[2]), one = 1;
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_type = BPF_MAP_TYPE_SOCKMAP, a.key_size = 4, a.value_size = 4, a.max_entries = 2;
    int map = (int)bpf(BPF_MAP_CREATE, &a);
    if (map < 0) { perror("BPF_MAP_CREATE"); return 1; }
    // key = skb arrived on the client socket (local port = LISTEN_PORT) ? 1 (upstream) : 0 (client)
    struct bpf_insn prog[] = {
        INSN(BPF_LDX | BPF_MEM | BPF_W, 2, 1, offsetof(struct __sk_buff, local_port), 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 0),
        INSN(BPF_JMP | BPF_JNE | BPF_K, 2, 0, 1, lport),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 1),
        INSN(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, map),
        INSN(0, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_map),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    static char log[65536];
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_SK_SKB, a.insns = (unsigned long)prog;
    a.insn_cnt = sizeof prog / sizeof prog[0], a.license = (unsigned long)"GPL";
    a.log_buf = (unsigned long)log, a.log_size = sizeof log, a.log_level = 1;
    int verdict = (int)bpf(BPF_PROG_LOAD, &a);
    if (verdict < 0) { perror("BPF_PROG_LOAD"); fputs(log, stderr); return 1; }
    memset(&a, 0, sizeof a);
    a.target_fd = (unsigned)map, a.attach_bpf_fd = (unsigned)verdict, a.attach_type = BPF_SK_SKB_VERDICT;
    if (bpf(BPF_PROG_ATTACH, &a) < 0) { perror("BPF_PROG_ATTACH"); return 1; }

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(lport), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in oa = {.sin_family = AF_INET, .sin_port = htons(oport), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (void *)&la, sizeof la) || listen(ls, 64)) { perror("listen"); return 1; }
    for (;;) {
        int c = accept(ls, 0, 0);
        if (c < 0) continue;
        char head[4096];
        int n = 0;
        while (n < (int)sizeof head - 1) {
            int r = (int)read(c, head + n, sizeof head - 1 - n);
            if (r <= 0) break;
            n += r, head[n] = 0;
            if (strstr(head, "\r\n\r\n")) break;
        }
        int u = socket(AF_INET, SOCK_STREAM, 0);
        static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
        if (connect(u, (void *)&oa, sizeof oa) == 0) {
            setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            // Both in the map before the 200: what the client sends after it must be redirected,
            // not left in the client socket's queue where nothing reads it.
            if (map_set(map, 1, u) == 0 && map_set(map, 0, c) == 0) {
                if (write(c, ok, sizeof ok - 1) == sizeof ok - 1) {
                    struct pollfd hup[2] = {{c, POLLRDHUP, 0}, {u, POLLRDHUP, 0}};
                    poll(hup, 2, -1);
                }
            } else {
                perror("BPF_MAP_UPDATE_ELEM");
            }
            map_clear(map, 0);
            map_clear(map, 1);
        }
        close(c);
        close(u);
    }
}
