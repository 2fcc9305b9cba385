//! The rendezvous store: a small key-value server over TCP that rank 0 serves at MASTER_ADDR:MASTER_PORT,
//! and the client every rank (rank 0 included) talks to it with. Gloo's rendezvous (through the C++ shim's
//! callbacks) and later the NCCL unique id exchange go through it. Every wait has a deadline.
//!
//! Wire format (little endian): request `op:u8, key_len:u32, key`, then for SET `len:u32, value`, for GET
//! `timeout_ms:u64`; reply for SET `0:u8`, for GET `0:u8, len:u32, value` or `1:u8` (timed out).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const SET: u8 = 1;
const GET: u8 = 2;

/// A store operation failed; the message names the rank, the key and the cause.
#[derive(Debug, thiserror::Error)]
#[error("rank {rank}: rendezvous store: {msg}")]
pub struct StoreError {
    pub rank: usize,
    pub msg: String,
}

type Table = Arc<(Mutex<HashMap<Vec<u8>, Vec<u8>>>, Condvar)>;

/// A connection to the job's store.
pub struct TcpStore {
    rank: usize,
    conn: Mutex<TcpStream>,
}

impl std::fmt::Debug for TcpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStore")
            .field("rank", &self.rank)
            .finish()
    }
}

impl TcpStore {
    /// Rank 0 starts the server on `port` (all interfaces) first; then every rank connects to
    /// `addr:port`, retrying until `timeout` has passed.
    pub fn connect(
        rank: usize,
        addr: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let err = |msg: String| StoreError { rank, msg };
        if rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", port))
                .map_err(|e| err(format!("cannot serve on port {port}: {e}")))?;
            let table: Table = Arc::default();
            std::thread::Builder::new()
                .name("ferrotune-store".into())
                .spawn(move || serve(listener, table))
                .map_err(|e| err(format!("cannot start the server thread: {e}")))?;
        }
        let deadline = Instant::now() + timeout;
        let conn = loop {
            let attempt = (addr, port)
                .to_socket_addrs()
                .and_then(|mut a| {
                    a.next()
                        .ok_or_else(|| io::Error::other("address resolves to nothing"))
                })
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)));
            match attempt {
                Ok(c) => break c,
                Err(e) if Instant::now() >= deadline => {
                    return Err(err(format!(
                        "cannot reach {addr}:{port} within {timeout:?}: {e}"
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        conn.set_nodelay(true).ok();
        Ok(TcpStore {
            rank,
            conn: Mutex::new(conn),
        })
    }

    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let io = (|| -> io::Result<u8> {
            let mut msg = request(SET, key);
            put_bytes(&mut msg, value);
            c.write_all(&msg)?;
            read_u8(&mut *c)
        })();
        match io {
            Ok(0) => Ok(()),
            Ok(s) => Err(self.err(key, format!("bad reply status {s}"))),
            Err(e) => Err(self.err(key, format!("connection lost: {e}"))),
        }
    }

    /// The value of `key`, waiting up to `timeout` for some rank to set it.
    pub fn get(&self, key: &[u8], timeout: Duration) -> Result<Vec<u8>, StoreError> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let io = (|| -> io::Result<Option<Vec<u8>>> {
            let mut msg = request(GET, key);
            msg.extend_from_slice(&(timeout.as_millis() as u64).to_le_bytes());
            c.write_all(&msg)?;
            match read_u8(&mut *c)? {
                0 => Ok(Some(read_bytes(&mut *c)?)),
                _ => Ok(None),
            }
        })();
        match io {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(self.err(key, format!("timed out after {timeout:?} waiting for it"))),
            Err(e) => Err(self.err(key, format!("connection lost: {e}"))),
        }
    }

    fn err(&self, key: &[u8], msg: String) -> StoreError {
        StoreError {
            rank: self.rank,
            msg: format!("key {:?}: {msg}", String::from_utf8_lossy(key)),
        }
    }
}

fn request(op: u8, key: &[u8]) -> Vec<u8> {
    let mut msg = vec![op];
    put_bytes(&mut msg, key);
    msg
}

fn put_bytes(msg: &mut Vec<u8>, b: &[u8]) {
    msg.extend_from_slice(&(b.len() as u32).to_le_bytes());
    msg.extend_from_slice(b);
}

fn read_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_bytes(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut n = [0u8; 4];
    r.read_exact(&mut n)?;
    let mut v = vec![0u8; u32::from_le_bytes(n) as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn serve(listener: TcpListener, table: Table) {
    for conn in listener.incoming().flatten() {
        let table = table.clone();
        conn.set_nodelay(true).ok();
        let _ = std::thread::Builder::new()
            .name("ferrotune-store-conn".into())
            .spawn(move || {
                if let Err(e) = handle(conn, &table) {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!("rendezvous store connection ended: {e}");
                    }
                }
            });
    }
}

fn handle(mut conn: TcpStream, table: &Table) -> io::Result<()> {
    let (map, cv) = &**table;
    loop {
        let op = read_u8(&mut conn)?;
        let key = read_bytes(&mut conn)?;
        match op {
            SET => {
                let value = read_bytes(&mut conn)?;
                map.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, value);
                cv.notify_all();
                conn.write_all(&[0])?;
            }
            GET => {
                let mut ms = [0u8; 8];
                conn.read_exact(&mut ms)?;
                let deadline = Instant::now() + Duration::from_millis(u64::from_le_bytes(ms));
                let mut guard = map.lock().unwrap_or_else(|p| p.into_inner());
                let value = loop {
                    if let Some(v) = guard.get(&key) {
                        break Some(v.clone());
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break None;
                    }
                    guard = cv
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                };
                drop(guard);
                match value {
                    Some(v) => {
                        let mut reply = vec![0u8];
                        put_bytes(&mut reply, &v);
                        conn.write_all(&reply)?;
                    }
                    None => conn.write_all(&[1])?,
                }
            }
            other => return Err(io::Error::other(format!("unknown store op {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_timeout_across_connections() {
        let port = crate::testutil::free_port();
        let t = Duration::from_secs(5);
        let s0 = TcpStore::connect(0, "127.0.0.1", port, t).unwrap();
        let s1 = TcpStore::connect(1, "127.0.0.1", port, t).unwrap();
        let waiter = std::thread::spawn(move || s1.get(b"k", Duration::from_secs(5)).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        s0.set(b"k", b"value").unwrap();
        assert_eq!(waiter.join().unwrap(), b"value");
        let start = Instant::now();
        let e = s0
            .get(b"missing", Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(
            e.contains("rank 0") && e.contains("missing") && e.contains("timed out"),
            "{e}"
        );
    }
}
