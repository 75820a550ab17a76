//! OpenAI-compatible chat client (`POST {base_url}/chat/completions`) on reqwest: works with
//! OpenAI, Azure-style gateways, vLLM, llama.cpp's server, Ollama and LM Studio.
//!
//! The API key is read from an environment variable named in the configuration and only ever
//! placed in the `Authorization` header: it is not part of any serialisable value, error or log
//! line. 429, 5xx, timeouts and connection failures are retried with exponential backoff
//! (honouring `Retry-After`); 401/403 and 404 fail at once with what to check.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Endpoint settings (no secret in here: only the variable's name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmConfig {
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub model: String,
    pub temperature: f64,
    pub max_tokens: usize,
    /// Per-request timeout, seconds.
    pub timeout_s: f64,
    /// Environment variable that holds the API key (unset: no Authorization header).
    pub api_key_env: String,
    /// Retries after the first attempt on 429/5xx/timeouts.
    pub max_retries: usize,
    /// First backoff in seconds; doubled each retry, at most 60 s.
    pub backoff_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(s: impl Into<String>) -> Self {
        Message {
            role: "system".into(),
            content: s.into(),
        }
    }
    pub fn user(s: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: s.into(),
        }
    }
    pub fn assistant(s: impl Into<String>) -> Self {
        Message {
            role: "assistant".into(),
            content: s.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(
        "{url}: HTTP {status}: the endpoint refused the credentials; check the API key in ${var}"
    )]
    Auth {
        url: String,
        status: u16,
        var: String,
    },
    #[error(
        "{url}: HTTP 404: no such endpoint or model {model:?}; check --llm-base-url and --llm-model"
    )]
    NotFound { url: String, model: String },
    #[error("{url}: HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: gave up after {attempts} attempts; last error: {last}")]
    Exhausted {
        url: String,
        attempts: usize,
        last: String,
    },
    #[error("{url}: the reply is not a chat completion: {message}")]
    Reply { url: String, message: String },
    #[error("LLM client: {0}")]
    Client(String),
}

/// Anything that answers chat messages (the HTTP client, or a scripted stand-in).
pub trait Chat {
    fn chat(&self, messages: &[Message]) -> Result<String, LlmError>;
}

/// Told (attempt, seconds to wait, reason) before each retry.
pub type RetryHook = Box<dyn Fn(usize, f64, &str)>;

pub struct ChatClient {
    cfg: LlmConfig,
    key: Option<String>,
    http: reqwest::blocking::Client,
    /// Called before each backoff sleep with (attempt, seconds, reason).
    pub on_retry: Option<RetryHook>,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}
#[derive(Deserialize)]
struct Choice {
    message: ReplyMessage,
}
#[derive(Deserialize)]
struct ReplyMessage {
    content: Option<String>,
}

fn snippet(s: &str) -> String {
    let s: String = s.chars().take(300).collect();
    s.replace('\n', " ")
}

impl ChatClient {
    pub fn new(cfg: LlmConfig) -> Result<Self, LlmError> {
        let key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs_f64(cfg.timeout_s.max(0.001)))
            .build()
            .map_err(|e| LlmError::Client(e.to_string()))?;
        Ok(ChatClient {
            cfg,
            key,
            http,
            on_retry: None,
        })
    }

    fn url(&self) -> String {
        format!(
            "{}/chat/completions",
            self.cfg.base_url.trim_end_matches('/')
        )
    }

    fn backoff(&self, attempt: usize, retry_after: Option<f64>) -> f64 {
        let b = self.cfg.backoff_s * 2f64.powi(attempt as i32);
        retry_after.unwrap_or(b).clamp(0.0, 60.0)
    }
}

impl Chat for ChatClient {
    fn chat(&self, messages: &[Message]) -> Result<String, LlmError> {
        let url = self.url();
        let body = serde_json::json!({
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        });
        let mut last = String::new();
        for attempt in 0..=self.cfg.max_retries {
            let mut req = self.http.post(&url).json(&body);
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            let (wait, reason) = match req.send() {
                Err(e) => {
                    let kind = if e.is_timeout() {
                        "timeout"
                    } else {
                        "connection"
                    };
                    (self.backoff(attempt, None), format!("{kind}: {e}"))
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok());
                    let text = resp.text().unwrap_or_default();
                    match status {
                        200..=299 => {
                            let c: Completion =
                                serde_json::from_str(&text).map_err(|e| LlmError::Reply {
                                    url: url.clone(),
                                    message: format!("{e}: {}", snippet(&text)),
                                })?;
                            return c
                                .choices
                                .into_iter()
                                .next()
                                .and_then(|c| c.message.content)
                                .ok_or_else(|| LlmError::Reply {
                                    url: url.clone(),
                                    message: "no choices[0].message.content".into(),
                                });
                        }
                        401 | 403 => {
                            return Err(LlmError::Auth {
                                url,
                                status,
                                var: self.cfg.api_key_env.clone(),
                            });
                        }
                        404 => {
                            return Err(LlmError::NotFound {
                                url,
                                model: self.cfg.model.clone(),
                            });
                        }
                        429 | 500..=599 => (
                            self.backoff(attempt, retry_after),
                            format!("HTTP {status}: {}", snippet(&text)),
                        ),
                        _ => {
                            return Err(LlmError::Http {
                                url,
                                status,
                                body: snippet(&text),
                            });
                        }
                    }
                }
            };
            last = reason;
            if attempt < self.cfg.max_retries {
                if let Some(f) = &self.on_retry {
                    f(attempt + 1, wait, &last);
                }
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
        }
        Err(LlmError::Exhausted {
            url,
            attempts: self.cfg.max_retries + 1,
            last,
        })
    }
}
