//! A tiny authoritative DNS server on 127.0.0.1 (UDP and TCP, one port) answering A/AAAA from a table.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// Every answer carries this TTL, so a resolver that honours TTLs asks again after a second.
pub const TTL: u32 = 1;

/// A running DNS server; point the proxy at `addr` (`dns_servers = ["127.0.0.1:PORT"]`).
/// Dropping it stops both listeners.
pub struct TestDns {
    /// UDP and TCP both listen here.
    pub addr: SocketAddr,
    zone: Arc<Zone>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Zone {
    /// Lower-case name without the trailing dot, in insertion order.
    records: Mutex<Vec<(String, IpAddr)>>,
    hang: Mutex<HashSet<String>>,
    /// (suffix, address): any name ending in the suffix without records of its own.
    under: Mutex<Vec<(String, IpAddr)>>,
    servfail: Mutex<HashSet<String>>,
    /// Every question received, UDP or TCP, answered or not.
    log: Mutex<Vec<(String, RecordType)>>,
    queries: AtomicUsize,
}

impl TestDns {
    /// Serves `records`; a name may appear several times and all its addresses are returned,
    /// in this order. Unknown names get NXDOMAIN; a known name without records of the asked
    /// type gets an empty NOERROR answer.
    pub async fn spawn(records: &[(&str, IpAddr)]) -> TestDns {
        let zone = Arc::new(Zone::default());
        lock(&zone.records).extend(records.iter().map(|(n, ip)| (normalize(n), *ip)));
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("dns local addr");
        let task = tokio::spawn(serve(udp, tcp, zone.clone()));
        TestDns { addr, zone, task }
    }

    /// Questions about `name` are received (and counted) but never answered.
    pub fn hang(&self, name: &str) {
        lock(&self.zone.hang).insert(normalize(name));
    }

    /// Questions about `name` are answered with SERVFAIL.
    pub fn servfail(&self, name: &str) {
        lock(&self.zone.servfail).insert(normalize(name));
    }

    /// Replaces every record of `name` (an empty slice makes it unknown: NXDOMAIN).
    pub fn set_records(&self, name: &str, ips: &[IpAddr]) {
        let name = normalize(name);
        let mut records = lock(&self.zone.records);
        records.retain(|(n, _)| *n != name);
        records.extend(ips.iter().map(|ip| (name.clone(), *ip)));
    }

    /// Every name ending in `suffix` (e.g. `.any.test`) that has no records of its own is
    /// answered with `ip`: endless distinct names without listing them.
    pub fn answer_under(&self, suffix: &str, ip: IpAddr) {
        lock(&self.zone.under).push((normalize(suffix), ip));
    }

    /// Questions received so far, all names and types.
    pub fn queries(&self) -> usize {
        self.zone.queries.load(Ordering::SeqCst)
    }

    /// Questions received so far about `name`, any type.
    pub fn queries_for(&self, name: &str) -> usize {
        let name = normalize(name);
        lock(&self.zone.log)
            .iter()
            .filter(|(n, _)| *n == name)
            .count()
    }

    /// Every question received, in order, e.g. `("api.pay.test", RecordType::A)`.
    pub fn query_log(&self) -> Vec<(String, RecordType)> {
        lock(&self.zone.log).clone()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A UDP socket and a TCP listener on the same loopback port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns udp");
        let addr = udp.local_addr().expect("dns udp addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

async fn serve(udp: UdpSocket, tcp: TcpListener, zone: Arc<Zone>) {
    let udp_zone = zone.clone();
    let udp_loop = async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            if let Some(answer) = udp_zone.answer(&buf[..n]) {
                let _ = udp.send_to(&answer, peer).await;
            }
        }
    };
    let tcp_loop = async move {
        let mut conns = JoinSet::new();
        loop {
            match tcp.accept().await {
                Ok((stream, _)) => {
                    conns.spawn(serve_tcp(stream, zone.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
            while conns.try_join_next().is_some() {}
        }
    };
    tokio::join!(udp_loop, tcp_loop);
}

/// DNS over TCP: each message is prefixed with its length as a big-endian u16.
async fn serve_tcp(mut stream: TcpStream, zone: Arc<Zone>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut msg = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        if let Some(answer) = zone.answer(&msg) {
            let Ok(len) = u16::try_from(answer.len()) else {
                return;
            };
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&answer);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

impl Zone {
    /// The wire answer to one wire query; `None` means stay silent.
    fn answer(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(bytes).ok()?;
        self.queries.fetch_add(1, Ordering::SeqCst);
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true)
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true);
        let Some(query) = request.queries().first().cloned() else {
            response.set_response_code(ResponseCode::FormErr);
            return response.to_vec().ok();
        };
        let name = normalize(&query.name().to_ascii());
        let qtype = query.query_type();
        lock(&self.log).push((name.clone(), qtype));
        response.add_query(query.clone());

        if lock(&self.hang).contains(&name) {
            return None;
        }
        if lock(&self.servfail).contains(&name) {
            response.set_response_code(ResponseCode::ServFail);
            return response.to_vec().ok();
        }
        let mut ips: Vec<IpAddr> = lock(&self.records)
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, ip)| *ip)
            .collect();
        if ips.is_empty() {
            ips = lock(&self.under)
                .iter()
                .filter(|(suffix, _)| name.ends_with(suffix.as_str()))
                .map(|(_, ip)| *ip)
                .collect();
        }
        if ips.is_empty() {
            response.set_response_code(ResponseCode::NXDomain);
            return response.to_vec().ok();
        }
        for ip in ips {
            let rdata = match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A) => RData::A(A::from(v4)),
                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA::from(v6)),
                _ => continue,
            };
            response.add_answer(Record::from_rdata(query.name().clone(), TTL, rdata));
        }
        response.set_response_code(ResponseCode::NoError);
        response.to_vec().ok()
    }
}
