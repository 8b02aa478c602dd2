use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Kills the child when the test ends, whatever happens.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_seeds_and_serves() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_graphsim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--seed-users",
                "3",
                "--seed-tenants",
                "2",
                "--seed-contacts",
                "2",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("graphsim starts"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let mut line = String::new();
    BufReader::new(stderr)
        .read_line(&mut line)
        .expect("a line on stderr");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("listening url")
        .to_owned();
    let stdout = child.0.stdout.take().expect("stdout");
    // The estate is printed before the listening line.
    let mut printed = String::new();
    let mut reader = BufReader::new(stdout);
    let mut buf = [0u8; 65536];
    while serde_json::from_str::<Value>(&printed).is_err() {
        let n = reader.read(&mut buf).expect("stdout");
        assert!(n > 0, "stdout closed: {printed}");
        printed.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let estate: Value = serde_json::from_str(&printed).expect("estate json");
    assert_eq!(estate.as_array().unwrap().len(), 2);
    let dir: Value = reqwest::get(format!("{url}/_sim/tenants"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dir.as_array().unwrap().len(), 2);
    assert_eq!(
        dir[0]["users"].as_array().unwrap().len(),
        4,
        "3 users + the shared mailbox"
    );
}
