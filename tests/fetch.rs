//! The weights download against a real HTTP server on 127.0.0.1: a good file, a wrong hash, a
//! transfer cut in the middle and resumed with a Range request, a 404, and nothing listening.
//! The server is a few lines over std::net so that it can drop a connection mid-body.

use diffnas::eval::fetch::{FetchError, Fetched, download, fetch, part_path};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// Serve the file (honouring Range).
    Good,
    /// Send the headers for the whole body, half of it, then close.
    CutHalfway,
    NotFound,
}

struct Server {
    url: String,
    /// Range headers the server saw, in order.
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

/// Serve `body` for each mode in `modes` (one connection each), then stop.
fn serve(body: Vec<u8>, modes: Vec<Mode>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/pt_inception.pth", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for mode in modes {
            let (mut sock, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(sock.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.to_string());
                }
            }
            seen.lock().unwrap().push(range.clone());
            if mode == Mode::NotFound {
                let _ = sock.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let start: usize = range
                .as_deref()
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            let rest = &body[start..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    rest.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                )
            };
            sock.write_all(head.as_bytes()).unwrap();
            let send = if mode == Mode::CutHalfway {
                &rest[..rest.len() / 2]
            } else {
                rest
            };
            let _ = sock.write_all(send);
            let _ = sock.flush();
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    });
    Server { url, ranges }
}

fn body() -> Vec<u8> {
    diffnas::eval::synthetic::bytes(99, 300_000)
}

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

const T: Duration = Duration::from_secs(5);

#[test]
fn download_good_file_checks_hash() {
    let b = body();
    let s = serve(b.clone(), vec![Mode::Good]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("w/pt.pth");
    let mut last = (0, None);
    let got = download(&s.url, &dest, &sha(&b)[..8], T, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(got, sha(&b));
    assert_eq!(std::fs::read(&dest).unwrap(), b);
    assert_eq!(last, (b.len() as u64, Some(b.len() as u64)));
    assert!(!part_path(&dest).exists());
}

/// `fetch` downloads once; a second call finds the file and asks the server nothing (it
/// serves one connection); a file with another hash is refused and left as it was.
#[test]
fn fetch_keeps_a_good_file_and_refuses_another() {
    let b = body();
    let s = serve(b.clone(), vec![Mode::Good]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pt.pth");
    let prefix = &sha(&b)[..8];
    let got = fetch(&s.url, &dest, prefix, T, &mut |_, _| {}).unwrap();
    assert_eq!(got, Fetched::Downloaded(sha(&b)));
    let again = fetch(&s.url, &dest, prefix, T, &mut |_, _| {}).unwrap();
    assert_eq!(again, Fetched::AlreadyThere(sha(&b)));
    assert_eq!(s.ranges.lock().unwrap().len(), 1);
    std::fs::write(&dest, b"something else").unwrap();
    let err = fetch(&s.url, &dest, prefix, T, &mut |_, _| {}).unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(matches!(&err, FetchError::Occupied { found, .. } if *found == sha(b"something else")));
    assert!(
        err.to_string().contains("remove it and fetch again"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"something else");
}

#[test]
fn download_with_wrong_hash_is_deleted() {
    let b = body();
    let s = serve(b, vec![Mode::Good]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pt.pth");
    match download(&s.url, &dest, "6726825d", T, &mut |_, _| {}) {
        Err(FetchError::Hash { expected, .. }) => assert_eq!(expected, "6726825d"),
        other => panic!("expected a hash error, got {other:?}"),
    }
    assert!(!dest.exists() && !part_path(&dest).exists());
}

#[test]
fn interrupted_download_resumes_with_range() {
    let b = body();
    let s = serve(b.clone(), vec![Mode::CutHalfway, Mode::Good]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pt.pth");
    let prefix = &sha(&b)[..8];
    match download(&s.url, &dest, prefix, T, &mut |_, _| {}) {
        Err(e @ FetchError::Interrupted { .. }) => {
            assert!(e.to_string().contains("again to resume"), "{e}")
        }
        other => panic!("expected an interruption, got {other:?}"),
    }
    let half = b.len() / 2;
    assert_eq!(
        std::fs::metadata(part_path(&dest)).unwrap().len() as usize,
        half
    );
    assert!(!dest.exists());
    download(&s.url, &dest, prefix, T, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b);
    assert_eq!(
        *s.ranges.lock().unwrap(),
        vec![None, Some(format!("{half}-"))]
    );
}

#[test]
fn http_error_and_offline_are_reported() {
    let s = serve(body(), vec![Mode::NotFound]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pt.pth");
    match download(&s.url, &dest, "00", T, &mut |_, _| {}) {
        Err(FetchError::Status { status, .. }) => assert_eq!(status, 404),
        other => panic!("expected HTTP 404, got {other:?}"),
    }
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/x.pth");
    let err = download(&url, &dest, "00", T, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, FetchError::Offline { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("--inception") && msg.contains(&url), "{msg}");
}
