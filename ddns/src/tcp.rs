//! DNS over TCP (RFC 1035 section 4.2.2, RFC 7766): two-octet length framing, every
//! message through the same [`DnsHandler::handle_bytes`] as UDP, so a message rejected
//! over TCP (short, a response, unparsable, oversized) is answered or dropped and counted
//! by the same reason. Zone transfers (several messages per query) go through the
//! handler's [`RequestHandler`] with a responder that frames each message.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once per listener (more are closed
//! at accept), one message in flight per connection (answered in order, RFC 7766 section
//! 6.2.1.1 allows it), an idle timeout between messages and while reading one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use crate::handler::DnsHandler;
use crate::metrics::Shard;

/// Most TCP connections served at once per listener.
pub const MAX_CONNECTIONS: usize = 1024;

/// Serve `listener` until the returned task is aborted (which also ends every connection).
pub(crate) fn serve(
    listener: TcpListener,
    handler: DnsHandler,
    idle: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let shard = handler.counters().shard();
        let mut conns = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let (stream, src) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::debug!(%error, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!(%src, "DNS TCP connection refused: too many connections");
                continue;
            };
            let h = handler.clone();
            let shard = Arc::clone(&shard);
            conns.spawn(async move {
                connection(stream, src, h, shard, idle).await;
                drop(permit);
            });
        }
    })
}

async fn connection(
    stream: TcpStream,
    src: SocketAddr,
    handler: DnsHandler,
    shard: Arc<Shard>,
    idle: Duration,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    serve_stream(rd, wr, src, &handler, &shard, idle).await;
}

/// Answers the length-prefixed messages read from `rd` on `wr` until the stream ends,
/// fails or idles (RFC 7766 section 8); returns the writer when no response is pending.
/// Generic over the stream so the fuzz target (`ddns::fuzz::tcp`) drives it from memory.
pub(crate) async fn serve_stream<R, W>(
    mut rd: R,
    wr: W,
    src: SocketAddr,
    handler: &DnsHandler,
    shard: &Shard,
    idle: Duration,
) -> Option<W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let wr = Arc::new(Mutex::new(wr));
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, rd.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => break, // closed, failed or idle
        }
        let n = usize::from(u16::from_be_bytes(len));
        // At most 65535 octets: the length field bounds the allocation.
        let mut msg = vec![0u8; n];
        match tokio::time::timeout(idle, rd.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        if let Some(req) = transfer_request(&msg, src) {
            let responder = Framed {
                wr: Arc::clone(&wr),
            };
            handler
                .handle_request::<_, TokioTime>(&req, responder)
                .await;
            continue;
        }
        if handler.handle_bytes(&msg, src, true, shard, &mut out)
            && write_frame(&wr, &out).await.is_err()
        {
            break;
        }
    }
    Arc::into_inner(wr).map(Mutex::into_inner)
}

/// A well-formed zone transfer or other multi-message request (it needs the
/// [`RequestHandler`] path); everything else is answered by `handle_bytes`.
fn transfer_request(msg: &[u8], src: SocketAddr) -> Option<Request> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 || msg.len() > crate::handler::MAX_QUERY {
        return None;
    }
    if !crate::handler::question_is_plain(msg) {
        return None;
    }
    let req = Request::from_bytes(msg.to_vec(), src, Protocol::Tcp).ok()?;
    crate::xfr::wants(&req).then_some(req)
}

async fn write_frame<W: AsyncWrite + Unpin>(wr: &Mutex<W>, body: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "response too long"))?;
    let mut w = wr.lock().await;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

/// Sends each response of a transfer as one length-prefixed message.
struct Framed<W> {
    wr: Arc<Mutex<W>>,
}

impl<W> Clone for Framed<W> {
    fn clone(&self) -> Self {
        Framed {
            wr: Arc::clone(&self.wr),
        }
    }
}

#[async_trait::async_trait]
impl<W: AsyncWrite + Unpin + Send + 'static> ResponseHandler for Framed<W> {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(4096);
        let info = {
            let mut enc = BinEncoder::new(&mut bytes);
            enc.set_max_size(u16::MAX);
            response.destructive_emit(&mut enc)?
        };
        write_frame(&self.wr, &bytes).await?;
        Ok(info)
    }
}
