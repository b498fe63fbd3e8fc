//! A minimal FastDFS protocol client, as a FastDFS client library speaks to the doors (`--fastdfs-listen`):
//! ask a tracker where to upload or download ([`store_door`], [`fetch_door`]), then upload or download on that
//! storage node ([`upload_to`], [`download_from`]). Each call opens
//! its own connections; every failure is a [`DoorError`] (an errno reply, or the connection failing), never a
//! panic, so that a fault test can count them.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use fdfs_common::fastdfs::{cmd, fixed_str, get_u64, put_fixed, put_u64, Header, GROUP_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a FastDFS call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorError {
    /// The server answered with this errno status.
    Errno(u8),
    /// Connecting, sending or reading failed (refused, reset, closed, timed out).
    Transport(String),
    /// A reply that is not what the protocol says.
    Malformed(String),
}

impl fmt::Display for DoorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DoorError::Errno(e) => write!(f, "errno {e}"),
            DoorError::Transport(why) => write!(f, "transport: {why}"),
            DoorError::Malformed(why) => write!(f, "malformed reply: {why}"),
        }
    }
}

/// One request on a new connection to `addr`, its reply body; `timeout` bounds the whole exchange.
pub async fn request(
    addr: SocketAddr,
    command: u8,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, DoorError> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let h = Header {
            len: body.len() as u64,
            cmd: command,
            status: 0,
        };
        s.write_all(&h.encode()).await?;
        s.write_all(body).await?;
        let mut head = [0u8; fdfs_common::fastdfs::HEADER_LEN];
        s.read_exact(&mut head).await?;
        let h = Header::decode(&head);
        let mut reply = vec![0u8; usize::try_from(h.len).unwrap_or(usize::MAX).min(1 << 30)];
        s.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>((h, reply))
    };
    let (h, reply) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| DoorError::Transport(format!("no reply within {timeout:?}")))?
        .map_err(|e| DoorError::Transport(format!("{:?}", e.kind())))?;
    if h.cmd != cmd::RESP {
        return Err(DoorError::Malformed(format!(
            "command {} in a reply",
            h.cmd
        )));
    }
    if h.status != 0 {
        return Err(DoorError::Errno(h.status));
    }
    Ok(reply)
}

/// The storage door of a tracker's query reply: `group(16) + ip(15) + port(8) ...`.
fn door_of(reply: &[u8]) -> Result<SocketAddr, DoorError> {
    if reply.len() < GROUP_LEN + 15 + 8 {
        return Err(DoorError::Malformed(format!("{} bytes", reply.len())));
    }
    let ip = String::from_utf8_lossy(fixed_str(&reply[GROUP_LEN..GROUP_LEN + 15])).into_owned();
    let port = get_u64(reply, GROUP_LEN + 15);
    format!("{ip}:{port}")
        .parse()
        .map_err(|e| DoorError::Malformed(format!("door {ip}:{port}: {e}")))
}

/// `group(16) + remote name` of a file ID (`group1/M00/..`).
fn named(id: &str) -> Vec<u8> {
    let (group, name) = id.split_once('/').unwrap_or((id, ""));
    let mut b = Vec::new();
    put_fixed(&mut b, group.as_bytes(), GROUP_LEN);
    b.extend_from_slice(name.as_bytes());
    b
}

/// Ask tracker door `tracker` where to upload: the storage door and its store path index.
pub async fn store_door(
    tracker: SocketAddr,
    timeout: Duration,
) -> Result<(SocketAddr, u8), DoorError> {
    let reply = request(tracker, cmd::QUERY_STORE_WITHOUT_GROUP_ONE, &[], timeout).await?;
    let door = door_of(&reply)?;
    Ok((door, reply.get(GROUP_LEN + 15 + 8).copied().unwrap_or(0)))
}

/// Upload `data` with extension `ext` to storage door `door`, store path `store_path`; the file ID.
pub async fn upload_to(
    door: SocketAddr,
    store_path: u8,
    ext: &str,
    data: &[u8],
    timeout: Duration,
) -> Result<String, DoorError> {
    let mut body = vec![store_path];
    put_u64(&mut body, data.len() as u64);
    put_fixed(&mut body, ext.as_bytes(), fdfs_common::fastdfs::EXT_LEN);
    body.extend_from_slice(data);
    let reply = request(door, cmd::UPLOAD_FILE, &body, timeout).await?;
    if reply.len() <= GROUP_LEN {
        return Err(DoorError::Malformed(format!(
            "upload reply of {} bytes",
            reply.len()
        )));
    }
    let group = String::from_utf8_lossy(fixed_str(&reply[..GROUP_LEN])).into_owned();
    let name = String::from_utf8_lossy(&reply[GROUP_LEN..]).into_owned();
    Ok(format!("{group}/{name}"))
}

/// Ask tracker door `tracker` where to download `id`: a storage door.
pub async fn fetch_door(
    tracker: SocketAddr,
    id: &str,
    timeout: Duration,
) -> Result<SocketAddr, DoorError> {
    let reply = request(tracker, cmd::QUERY_FETCH_ONE, &named(id), timeout).await?;
    door_of(&reply)
}

/// Download the whole of `id` from storage door `door`.
pub async fn download_from(
    door: SocketAddr,
    id: &str,
    timeout: Duration,
) -> Result<Vec<u8>, DoorError> {
    let mut body = Vec::new();
    put_u64(&mut body, 0);
    put_u64(&mut body, 0);
    body.extend_from_slice(&named(id));
    request(door, cmd::DOWNLOAD_FILE, &body, timeout).await
}
