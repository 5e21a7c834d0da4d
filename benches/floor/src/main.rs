//! The floor: the leanest hyper proxy (one current_thread runtime, one upstream connection
//! per client connection, no pool, no header touched, only the URI rewritten to origin form).
//! What any hyper-based gateway can hope to reach; a reference row for scripts/bench.
//!
//!     floor LISTEN UPSTREAM      e.g. floor 127.0.0.1:9020 127.0.0.1:9001

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::rc::Rc;
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let listen = std::env::args().nth(1).unwrap_or("127.0.0.1:9010".into());
    let upstream = std::env::args().nth(2).unwrap_or("127.0.0.1:9001".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(listen, upstream))
}

async fn serve(listen: String, upstream: String) -> std::io::Result<()> {
    let l = TcpListener::bind(&listen).await?;
    loop {
        let (s, _) = l.accept().await?;
        s.set_nodelay(true).ok();
        let up = upstream.clone();
        tokio::task::spawn_local(async move {
            let sender: Rc<RefCell<Option<SendRequest<Incoming>>>> = Rc::new(RefCell::new(None));
            let svc =
                hyper::service::service_fn(move |req| forward(req, sender.clone(), up.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn forward(
    mut req: Request<Incoming>,
    sender: Rc<RefCell<Option<SendRequest<Incoming>>>>,
    up: String,
) -> std::io::Result<Response<Incoming>> {
    if sender.borrow().is_none() {
        let u = TcpStream::connect(&up).await?;
        u.set_nodelay(true).ok();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(u))
            .await
            .map_err(std::io::Error::other)?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        *sender.borrow_mut() = Some(tx);
    }
    let origin_form: Uri = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(std::io::Error::other)?;
    *req.uri_mut() = origin_form;
    let fut = match sender.borrow_mut().as_mut() {
        Some(tx) => tx.send_request(req),
        None => return Err(std::io::Error::other("no upstream connection")),
    };
    fut.await.map_err(std::io::Error::other)
}
