//! hpk-probe: a static TCP sender/receiver that tests put inside container
//! images (which have no tools of their own) to move verified bytes.
//! Test support only; never shipped.
//!
//!   hpk-probe send HOST:PORT LEN SEED   sends LEN bytes of the sequence SEED
//!   hpk-probe recv PORT                  takes one connection, digests it
//!   hpk-probe connect PATH               connects to a UNIX socket and closes
//!
//! `send` and `recv` print `len=<bytes> hash=<hex> peer=<addr>` on success,
//! `connect` prints `connected`; failures print the OS error on stderr.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use hpk_testbed::transfer::{self, Digest};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if let ["connect", path] = words.as_slice() {
        return connect(path);
    }
    let result = match words.as_slice() {
        ["send", dest, len, seed] => send(dest, len, seed),
        ["recv", port] => recv(port),
        _ => {
            Err("usage: hpk-probe send HOST:PORT LEN SEED | recv PORT | connect SOCKET-PATH".into())
        }
    };
    match result {
        Ok((digest, peer)) => {
            println!("len={} hash={:016x} peer={peer}", digest.len, digest.hash);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hpk-probe: {err}");
            ExitCode::FAILURE
        }
    }
}

type Outcome = Result<(Digest, SocketAddr), Box<dyn std::error::Error>>;

fn send(dest: &str, len: &str, seed: &str) -> Outcome {
    let dest: SocketAddr = dest.parse()?;
    let mut stream = TcpStream::connect_timeout(&dest, Duration::from_secs(10))?;
    let digest = transfer::send_over(&mut stream, len.parse()?, seed.parse()?)?;
    Ok((digest, dest))
}

fn recv(port: &str) -> Outcome {
    let listener = TcpListener::bind(("0.0.0.0", port.parse::<u16>()?))?;
    let (mut stream, peer) = listener.accept()?;
    Ok((transfer::receive_from(&mut stream)?, peer))
}

/// Whether this process (as whichever user runs it) may connect to `path`.
fn connect(path: &str) -> ExitCode {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => {
            println!("connected");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hpk-probe: connect {path}: {err}");
            ExitCode::FAILURE
        }
    }
}
