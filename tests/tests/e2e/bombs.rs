//! Crafted sync messages that are tiny on the wire and enormous once
//! Automerge expands them, built by hand from the storage format (a change
//! chunk: magic, checksum, type, length, body of header and op columns).

use std::io::Write;

use sha2::{Digest, Sha256};

fn leb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(out: &mut Vec<u8>, mut value: i64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A storage chunk with the checksum Automerge checks.
fn chunk(chunk_type: u8, body: &[u8]) -> Vec<u8> {
    let mut hashed = vec![chunk_type];
    leb(&mut hashed, body.len() as u64);
    hashed.extend_from_slice(body);
    let hash = Sha256::digest(&hashed);
    let mut out = vec![0x85, 0x6f, 0x4a, 0x83];
    out.extend_from_slice(&hash[..4]);
    out.extend_from_slice(&hashed);
    out
}

/// A V1 sync message carrying `chunk` as its one change.
fn message(chunk: &[u8]) -> Vec<u8> {
    let mut out = vec![0x42, 0, 0, 0, 1];
    leb(&mut out, chunk.len() as u64);
    out.extend_from_slice(chunk);
    out
}

/// A change body: no deps, a fresh actor, seq 1, start op 1, and op
/// columns that are each one run declaring `ops` null puts at key "k".
fn change_body(ops: u64) -> Vec<u8> {
    let n = ops as i64;
    let run = |value: u64| {
        let mut col = Vec::new();
        sleb(&mut col, n);
        leb(&mut col, value);
        col
    };
    let mut key = Vec::new();
    sleb(&mut key, n);
    key.extend_from_slice(&[1, b'k']);
    let mut insert = Vec::new();
    leb(&mut insert, ops);
    // (column spec, data): key string, insert flags, action, value metadata, predecessors.
    let columns: [(u64, Vec<u8>); 5] = [
        (21, key),
        (52, insert),
        (66, run(1)),
        (86, run(0)),
        (112, run(0)),
    ];
    let mut body = vec![0, 16];
    body.extend_from_slice(&rand_actor());
    body.extend_from_slice(&[1, 1, 0, 0, 0]);
    leb(&mut body, columns.len() as u64);
    for (spec, data) in &columns {
        leb(&mut body, *spec);
        leb(&mut body, data.len() as u64);
    }
    for (_, data) in &columns {
        body.extend_from_slice(data);
    }
    body
}

fn rand_actor() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

/// Under 100 bytes that declare a billion operations: past 1 GiB of memory
/// however Automerge lays an operation out.
pub fn operation_bomb() -> Vec<u8> {
    message(&chunk(1, &change_body(1_000_000_000)))
}

/// A compressed change chunk (type 2) of at most 64 KiB whose DEFLATE body
/// inflates to 64 MiB + 64 KiB of zeros, past the default cap (DEFLATE tops out near 1:1032).
pub fn deflate_bomb() -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        encoder.write_all(&zeros).expect("in memory");
    }
    encoder.write_all(&zeros[..64 * 1024]).expect("in memory");
    let body = encoder.finish().expect("in memory");
    // The checksum of a compressed chunk covers the change it inflates to,
    // which admission never gets to: any four bytes do.
    let mut out = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    leb(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    message(&out)
}

#[test]
fn the_bombs_are_small() {
    assert!(operation_bomb().len() < 100);
    assert!(
        deflate_bomb().len() <= 64 * 1024,
        "{}",
        deflate_bomb().len()
    );
}

/// A change that passes admission but makes Automerge panic: a new
/// actor's first change numbered 2 (Automerge unwraps a missing actor
/// entry). Stateless admission cannot see it; the server must survive it.
pub fn panicking_change(base: &automerge::Automerge) -> Vec<u8> {
    let mut fork = base
        .fork()
        .with_actor(automerge::ActorId::from(rand_actor()));
    let mut tx = fork.transaction();
    automerge::transaction::Transactable::put(&mut tx, automerge::ROOT, "x", 1).expect("put");
    tx.commit();
    let raw = fork
        .get_last_local_change()
        .expect("a change")
        .raw_bytes()
        .to_vec();
    // magic (4), checksum (4), type (1), LEB128 length, body.
    let mut at = 9;
    let mut len: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = raw[at];
        at += 1;
        len |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = raw[at..at + len as usize].to_vec();
    // deps: count 1 and a 32-byte hash; actor: length 16 and 16 bytes; seq.
    assert_eq!(body[50], 1, "seq 1 where expected");
    body[50] = 2;
    message(&chunk(1, &body))
}
