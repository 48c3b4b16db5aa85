//! Built inside an earlier commit's source tree (as `core/examples/dump_logits.rs`) by
//! `scripts/make-legacy-fixtures.sh`: prints, for each `FILE SIZE` line on stdin, the
//! logits that commit's decode engine gives after the fixtures' prompt, one token at a
//! time — the reference `tests/legacy.rs` compares the current decoders against. Written
//! against the API of 5ab688e (String errors, one engine type per family).
use modula_core::engine::{DenseEngine, MfEngine, SbEngine};
use modula_core::Model;
use std::io::BufRead;

fn main() -> Result<(), String> {
    let dir = std::env::args().nth(1).ok_or("usage: dump_logits DIR < lines")?;
    let prompt: Vec<u32> = b"Once upon a time".iter().map(|&b| u32::from(b)).collect();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut it = line.split_whitespace();
        let (file, size) = (it.next().ok_or("file")?, it.next().ok_or("size")?);
        let m = Model::open(format!("{dir}/{file}")).map_err(|e| e.to_string())?;
        let mut last = Vec::new();
        match m.get_str("modula.model") {
            Some("moduleformer") => {
                let mut e = MfEngine::new(&m, 1024)?;
                if size != "full" {
                    let n: usize = size.parse().map_err(|_| "size")?;
                    e.set_submodel(Some((n, n)))?;
                }
                for &t in &prompt {
                    last = e.step(t)?.to_vec();
                }
            }
            Some("seqboat") => {
                let mut e = SbEngine::new(&m)?;
                if size != "full" {
                    e.set_depth(Some(size.parse().map_err(|_| "size")?))?;
                }
                for &t in &prompt {
                    last = e.step(t)?.to_vec();
                }
            }
            _ => {
                let mut e = DenseEngine::new(&m, 32)?;
                if size != "full" {
                    let p: Vec<usize> = size.split('x').map(|v| v.parse().unwrap_or(0)).collect();
                    e.set_submodel(Some((p[0], p[1])))?;
                    e.set_heads(Some(p[2]))?;
                }
                for &t in &prompt {
                    last = e.step(t)?.to_vec();
                }
            }
        }
        let vals: Vec<String> = last.iter().map(|v| format!("{:08x}", v.to_bits())).collect();
        println!("{file}\t{size}\t{}", vals.join(","));
    }
    Ok(())
}
