//! A tenant's prompt record (`<tenant>.prompts.jsonl`): one line per request, appended as
//! the request ends, beside its request event, so an agent killed mid-trial keeps the prompt
//! of every request its tenant stream holds.
//!
//! The lines are written by a thread of their own behind a bounded queue: a request hands over
//! its index (and its answer, when it keeps one) and goes; the prompt text is rebuilt from the
//! seed and written off the load's threads. When the disk falls behind by a whole queue, the
//! ended requests wait for room rather than the queue growing without bound.

use std::io;
use std::sync::Arc;

use multitenant::events::{Event, PromptEvent};
use tokio::sync::{mpsc, oneshot};

use super::prompts::{Prompt, PromptFactory};
use super::request_id;
use crate::recorder::StreamFile;

/// Ended requests the writer may lag behind by.
const QUEUE: usize = 4096;

/// The sending side: a request records itself here when it ends.
#[derive(Clone)]
pub struct PromptLog {
    queue: mpsc::Sender<Ended>,
}

/// The writing side: the thread and what it did.
pub struct PromptWriter {
    done: oneshot::Receiver<io::Result<u64>>,
}

struct Ended {
    index: u64,
    /// The prompt as sent, when it cannot be rebuilt from the index (a conversation's turn).
    prompt: Option<Prompt>,
    response: Option<String>,
}

impl PromptLog {
    /// Starts the writer of `tenant`'s prompts into `stream`, rebuilding each from `factory`.
    pub fn start(
        tenant: String,
        factory: Arc<PromptFactory>,
        stream: Arc<StreamFile>,
    ) -> io::Result<(PromptLog, PromptWriter)> {
        let (queue, mut ended) = mpsc::channel::<Ended>(QUEUE);
        let (report, done) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("prompts-{tenant}"))
            .spawn(move || {
                let mut written = 0;
                let mut first_error = None;
                while let Some(Ended {
                    index,
                    prompt,
                    response,
                }) = ended.blocking_recv()
                {
                    if first_error.is_some() {
                        continue; // keep draining, so no request waits on a dead writer
                    }
                    let prompt = prompt.unwrap_or_else(|| factory.prompt(index));
                    let event = Event::Prompt(PromptEvent {
                        id: request_id(&tenant, index),
                        origin: prompt.origin,
                        prompt_tokens: prompt.tokens,
                        max_tokens: prompt.max_tokens,
                        text: prompt.text,
                        expected: prompt.expected.filter(|_| response.is_some()),
                        response,
                    });
                    match stream.append(&event) {
                        Ok(()) => written += 1,
                        Err(e) => first_error = Some(e),
                    }
                }
                let _ = report.send(first_error.map_or(Ok(written), Err));
            })?;
        Ok((PromptLog { queue }, PromptWriter { done }))
    }

    /// Records that request `index` ended, with its prompt when the factory cannot rebuild
    /// it, and the answer it kept, if any.
    pub async fn record(&self, index: u64, prompt: Option<Prompt>, response: Option<String>) {
        // Fails only once the writer is gone, which `PromptWriter::finish` reports.
        let _ = self
            .queue
            .send(Ended {
                index,
                prompt,
                response,
            })
            .await;
    }
}

impl PromptWriter {
    /// Waits until every recorded request is written (every [`PromptLog`] must be dropped
    /// first); returns how many lines were written, or the first write error.
    pub async fn finish(self) -> io::Result<u64> {
        self.done
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the prompt writer thread panicked")))
    }
}
