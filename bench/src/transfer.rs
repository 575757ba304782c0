//! Data staging throughput: a file downloaded as a resource file and
//! uploaded as an output file through berth, against curl moving the same
//! number of bytes to and from the same server in the same run. The server
//! is the benchmark's own, on 127.0.0.1 (bounded: it takes a fixed number of
//! connections); it times each request itself, from its head to its last
//! byte, so both clients are measured the same way. The agent's peak RSS
//! over all the transfers is reported too (the data is streamed, never held).

use crate::agent::Agent;
use crate::report::Row;
use berth_proto::v1 as pb;
use berth_proto::v1::node_agent_client::NodeAgentClient;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// One request the server answered: method, path, bytes, how long it took.
type Sample = (String, String, u64, Duration);

#[derive(Clone)]
struct Server {
    port: u16,
    source: Arc<Path>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Server {
    async fn start(source: &Path, max_connections: usize) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let s =
            Server { port: listener.local_addr().unwrap().port(), source: Arc::from(source), samples: Arc::default() };
        let server = s.clone();
        tokio::spawn(async move {
            for _ in 0..max_connections {
                let Ok((conn, _)) = listener.accept().await else { return };
                let server = server.clone();
                tokio::spawn(async move { server.serve(conn).await });
            }
        });
        s
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}?sig=bench", self.port)
    }

    /// The last sample of `method` on `path`.
    fn last(&self, method: &str, path: &str) -> (u64, Duration) {
        let samples = self.samples.lock().unwrap();
        let s = samples.iter().rev().find(|s| s.0 == method && s.1 == path).expect("the request reached the server");
        (s.2, s.3)
    }

    async fn serve(&self, mut conn: tokio::net::TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 1 << 20];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 1 << 16 {
                return;
            }
        };
        let start = Instant::now();
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or("").to_ascii_uppercase();
        let path = words.next().unwrap_or("").split('?').next().unwrap_or("").to_owned();
        let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
        let bytes = if method == "PUT" {
            if header("expect:").as_deref() == Some("100-continue") {
                let _ = conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            }
            let len: u64 = header("content-length:").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut got = (buf.len() - head_end) as u64;
            while got < len {
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n as u64,
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            got
        } else {
            let mut f = tokio::fs::File::open(&*self.source).await.expect("source file");
            let len = f.metadata().await.expect("source size").len();
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n");
            if conn.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            loop {
                let n = f.read(&mut chunk).await.expect("read source");
                if n == 0 {
                    break;
                }
                if conn.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
            }
            let _ = conn.shutdown().await;
            len
        };
        self.samples.lock().unwrap().push((method, path, bytes, start.elapsed()));
    }
}

fn mib_per_s((bytes, d): (u64, Duration)) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

fn host_task(task: &str, command_line: &str) -> pb::TaskSpec {
    let mut spec = crate::scenarios::spec("xfer", task, "", command_line);
    spec.container = None;
    spec
}

async fn run_to_end(c: &mut NodeAgentClient<Channel>, spec: pb::TaskSpec) {
    let (job, task) = (spec.job_id.clone(), spec.task_id.clone());
    c.run_task(pb::RunTaskRequest { task: Some(spec) }).await.expect("RunTask");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let req = pb::GetTaskRequest { job_id: job.clone(), task_id: task.clone() };
        let t = c.get_task(req).await.expect("GetTask").into_inner();
        if t.state == pb::TaskState::Completed as i32 {
            assert!(t.exit_code == Some(0) && t.failure_info.is_none(), "transfer task failed: {t:?}");
            break;
        }
        assert!(Instant::now() < deadline, "transfer task {task} did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let req = pb::DeleteTaskRequest { job_id: job, task_id: task };
    c.delete_task(req).await.expect("DeleteTask");
}

fn curl(args: &[&str]) {
    let out = std::process::Command::new("curl").args(["-sS", "--fail"]).args(args).output().expect("run curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `runs` rounds of: berth downloads `bytes`, curl downloads them, berth
/// uploads `bytes`, curl uploads them.
pub(crate) async fn transfers(
    mut c: NodeAgentClient<Channel>,
    agent: &Agent,
    dir: &Path,
    bytes: u64,
    runs: usize,
) -> Vec<Row> {
    std::fs::create_dir_all(dir).expect("transfer dir");
    let source = dir.join("source.bin");
    let status = std::process::Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&source).expect("source file"))
        .status()
        .expect("head");
    assert!(status.success());
    let server = Server::start(&source, 8 * runs + 8).await;
    let (mut down, mut curl_down, mut up, mut curl_up) = (vec![], vec![], vec![], vec![]);
    let copy = dir.join("curl.bin");
    for i in 0..runs {
        let mut spec = host_task(&format!("down-{i}"), "true");
        spec.resource_files = vec![pb::ResourceFile {
            http_url: server.url("/file.bin"),
            file_path: "in.bin".into(),
            ..Default::default()
        }];
        run_to_end(&mut c, spec).await;
        down.push(mib_per_s(server.last("GET", "/file.bin")));

        curl(&["-o", copy.to_str().unwrap(), &server.url("/curl.bin")]);
        curl_down.push(mib_per_s(server.last("GET", "/curl.bin")));

        let mut spec = host_task(&format!("up-{i}"), &format!("/bin/sh -c 'head -c {bytes} /dev/urandom > out.bin'"));
        spec.output_files = vec![pb::OutputFile {
            file_pattern: "out.bin".into(),
            destination: Some(pb::OutputFileDestination {
                container: Some(pb::OutputFileBlobContainerDestination {
                    container_url: server.url("/con"),
                    path: "up.bin".into(),
                    upload_headers: vec![],
                }),
            }),
            upload_options: None,
        }];
        run_to_end(&mut c, spec).await;
        up.push(mib_per_s(server.last("PUT", "/con/up.bin")));

        let put = [
            "-T",
            copy.to_str().unwrap(),
            "-H",
            "x-ms-blob-type: BlockBlob",
            "-o",
            "/dev/null",
            &server.url("/con/curl.bin"),
        ];
        curl(&put);
        curl_up.push(mib_per_s(server.last("PUT", "/con/curl.bin")));
        let _ = std::fs::remove_file(&copy);
    }
    let (_, peak_kib) = agent.memory_kib();
    let _ = std::fs::remove_file(&source);
    let mib = bytes >> 20;
    vec![
        Row::medians(&format!("staging: download {mib} MiB (MiB/s; baseline: curl)"), &down, &curl_down, "≥ 0.9× curl"),
        Row::medians(&format!("staging: upload {mib} MiB (MiB/s; baseline: curl)"), &up, &curl_up, "≥ 0.9× curl"),
        Row::new("staging: agent peak RSS over the transfers (MiB)", peak_kib as f64 / 1024.0, None, "≤ 64"),
    ]
}
