//! A loopback address that silently drops connection attempts, without root or firewall rules.
//!
//! Linux drops a SYN when the listener's accept queue is full (`tcp_abort_on_overflow = 0`,
//! the default): a listener with a backlog of 0 that never accepts, once one connection sits
//! in its queue, answers nothing, and a connect to it hangs through its SYN retransmissions
//! exactly as to a blackholed address. Any 127.x.y.z address works, so a blackhole and an
//! origin can share a port on different loopback addresses (one DNS answer, one port).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpStream;

/// A silent `ip:port`; dropping it closes the listener and the connection filling its queue.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: Socket,
    _queued: Vec<TcpStream>,
}

impl Blackhole {
    /// Bind `ip:port` (a loopback address) with backlog 0 and fill its queue until a connect
    /// goes unanswered; panics if the address never turns silent.
    pub async fn spawn(ip: IpAddr, port: u16) -> Blackhole {
        assert!(ip.is_loopback(), "blackholes stay on loopback, not {ip}");
        let addr = SocketAddr::new(ip, port);
        let listener =
            Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("blackhole socket");
        listener
            .bind(&addr.into())
            .unwrap_or_else(|e| panic!("cannot bind the blackhole {addr}: {e}"));
        listener.listen(0).expect("blackhole listen");
        let mut queued = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => panic!("the blackhole {addr} refused a connect: {e}"),
                Err(_) => {
                    return Blackhole {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    }
                }
            }
        }
        panic!(
            "{addr} still accepts connections after {} queued",
            queued.len()
        );
    }
}
