//! A destination that behaves like the real ones, on a loopback port: a small HTTP/1.1
//! server that answers each request as the test scripted it (an answer with any status
//! and headers, a hang past the client's timeout, a connection closed without a word),
//! and keeps every request it read, with the moment it arrived.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// How the sink treats one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Reads the request and says nothing for this long.
    Hang(Duration),
    /// Reads the request and closes the connection.
    Close,
}

impl Behaviour {
    pub fn status(status: u16) -> Behaviour {
        Behaviour::Answer {
            status,
            headers: vec![],
            body: String::new(),
        }
    }

    pub fn with(status: u16, headers: &[(&str, &str)], body: &str) -> Behaviour {
        Behaviour::Answer {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            body: body.into(),
        }
    }
}

/// One request as the sink read it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// The same moment by the wall clock, to hold against a delivery's deadline.
    pub wall: chrono::DateTime<chrono::Utc>,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// What the sink did with it.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

#[derive(Clone)]
pub struct Sink {
    pub port: u16,
    script: Arc<Mutex<VecDeque<Behaviour>>>,
    /// What every request gets once the script is used up.
    otherwise: Arc<Mutex<Behaviour>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    pub async fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = Sink {
            port: listener.local_addr().unwrap().port(),
            script: Default::default(),
            otherwise: Arc::new(Mutex::new(Behaviour::status(200))),
            received: Default::default(),
        };
        let server = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let sink = server.clone();
                tokio::spawn(async move { sink.serve(socket).await });
            }
        });
        sink
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next requests get these, in order.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.script.lock().unwrap().extend(behaviours);
    }

    pub fn otherwise(&self, behaviour: Behaviour) {
        *self.otherwise.lock().unwrap() = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    async fn serve(&self, socket: tokio::net::TcpStream) {
        let mut reader = BufReader::new(socket);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut headers = Vec::new();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((k, v)) = header.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let length: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            let at = Instant::now();
            let behaviour = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| self.otherwise.lock().unwrap().clone());
            let answered = match &behaviour {
                Behaviour::Answer { status, .. } => *status,
                Behaviour::Hang(_) => 0,
                Behaviour::Close => 1,
            };
            self.received.lock().unwrap().push(Received {
                at,
                wall: chrono::Utc::now(),
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                answered,
            });
            match behaviour {
                Behaviour::Answer {
                    status,
                    headers,
                    body,
                } => {
                    let mut answer = format!(
                        "HTTP/1.1 {status} Status\r\ncontent-length: {}\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        answer.push_str(&format!("{k}: {v}\r\n"));
                    }
                    answer.push_str("\r\n");
                    answer.push_str(&body);
                    if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Behaviour::Hang(how_long) => {
                    tokio::time::sleep(how_long).await;
                    return;
                }
                Behaviour::Close => return,
            }
        }
    }
}
