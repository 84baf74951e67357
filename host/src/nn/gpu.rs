//! The GPU backend: one batcher thread per model owns its [`GpuModel`] and runs every live
//! context's work on it, with continuous batching.
//!
//! How it works:
//! 1. A context ([`GpuContext`]) takes a fixed-size state slot from the model's free list when it
//!    is made (none free: `too-large`, naming `--nn-slots`). Memory per request is that slot,
//!    whatever the prompt or output length.
//! 2. `compute` sends `(slot, tokens, greedy, reply)` to the batcher over a channel and awaits
//!    the reply; the async task holds no thread while the GPU works. The batcher polls its
//!    inbox for [`SPIN_BEFORE_SLEEP`] before it sleeps on it.
//! 3. The batcher loops: it takes everything that is waiting and runs it as **one call**
//!    ([`GpuModel::submit`]) of up to `max_batch` sequences:
//!    - every waiting **decode** (one-token compute), one row each;
//!    - a **lead piece**: the next tokens of the oldest prompt too long to ride (below), up to
//!      [`LEAD_PIECE`] tokens while others decode, else up to the model's `max_chunk` (a prompt
//!      alone prefills as a chunk, the fastest way to its first token); a guest chunk longer
//!      than that takes several turns;
//!    - **riders**: every other prompt with at most [`RIDE_MAX_TOKENS`] tokens left feeds its
//!      next token as one more row.
//!
//!    So prompts advance inside the decode steps instead of in calls of their own. A separate
//!    prefill call of a short prompt costs about as much GPU time as a whole decode step of
//!    many rows (H200: 4 ms for a 30-token prompt, against 4–7 ms for 100–256 rows), and at 256
//!    streams such calls took half of every step cycle; as rows they cost almost nothing. The
//!    lead is capped while others decode because the scan walks a sequence's tokens one after
//!    another: a long piece would lengthen the step of every stream in it.
//!
//!    Before a call, the batcher **lingers** (at most half the last call's time, and
//!    [`MAX_LINGER`]) until every stream of the last two steps has queued its next token: guests
//!    answer at different speeds, and without the wait early and late streams settle into
//!    alternate, half-full steps. A call takes whatever arrived meanwhile (continuous batching).
//!
//!    Every call computes each sequence's greedy token on the GPU and reads it back (4 bytes);
//!    its logits (vocab × 4 bytes) are read back only for a compute without `greedy` that ends
//!    in this call, so one call mixes both kinds. A compute asking for n > 1 greedy tokens
//!    (**run-ahead**) runs on with each new token until it has n: a call waits only for the
//!    guests whose run just ended (H200, 256 streams: the linger went from 0.73 to 0.28 ms a
//!    call). A **greedy run** (the contract's `"greedy-run"`, a streamed response) is the same
//!    job with a channel for a reply ([`Reply::Run`]): each token goes to the context as soon as
//!    its call is read back, and the job runs on whether or not the guest has taken it yet.
//!    Greedy tokens end at the first of the job's stop tokens (`"greedy-stop"`); if the call
//!    that feeds it back went in before it was read back, that call's token is dropped.
//!
//!    **Calls in flight.** The batcher submits the next call before it reads back the last one,
//!    so the GPU runs them back to back: the next call is built, and the streams it waits for
//!    linger, while the last one runs. A greedy run that goes on after the call in flight takes
//!    its next token from that call on the GPU ([`Feed::Greedy`]), and a prompt advances when its
//!    piece is submitted. The turn then reads back the older call and answers it. At most two
//!    calls are in flight; the call queued behind one that failed fails with it.
//! 4. A dropped context sends its slot back through the same channel; the batcher drops any
//!    work still queued for it, resets the slot ([`GpuModel::reset`]) and only then puts it on
//!    the free list, so a slot is always zero when it is handed out again.
//! 5. A [`GpuError`] (device lost, validation) fails the requests of that call (and of the
//!    call queued behind it) with `runtime-error`, is logged, and the batcher keeps serving.
//!
//! The loop is written against [`Stepper`], so its scheduling is tested with a CPU twin.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tinystate_engine::TokenId;
use tinystate_gpu::{Feed, GpuError, GpuModel, Lead, SlotId, StepRow, logits_wanted};
use tokio::sync::oneshot;

use super::contract::{Output, logits_bytes};
use super::{NnError, NnStats};

/// Default number of state slots per model (`--nn-slots`).
pub const DEFAULT_SLOTS: u32 = 256;
/// Most decode rows in one GPU step (fewer if there are fewer slots).
pub const MAX_BATCH: u32 = 256;
/// Most tokens of a prompt in one GPU call (the model's `max_chunk`); a guest chunk (up to 512)
/// longer than this is split, a piece per turn.
pub const MAX_PREFILL_PIECE: u32 = 128;
/// Most tokens of the lead piece in a call that also decodes (see the module doc).
pub const LEAD_PIECE: usize = 32;
/// The longest the batcher waits for the streams of the last steps to queue their next token
/// (see `Batcher::linger`; at most half a step).
pub const MAX_LINGER: Duration = Duration::from_millis(2);
/// How long the batcher polls its inbox before it sleeps on it (see `Batcher::recv`).
pub const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(200);
/// A prompt with at most this many tokens left rides along the decode steps, a token per step,
/// while other requests decode (see the module doc). Longer ones take the lead piece in turn.
pub const RIDE_MAX_TOKENS: usize = 64;

/// What the batcher needs of a model: [`GpuModel`], or a CPU twin in tests.
pub trait Stepper: Send + 'static {
    /// Logits per row.
    fn vocab(&self) -> usize;
    /// Number of state slots.
    fn slots(&self) -> u32;
    /// Most sequences per call.
    fn max_batch(&self) -> usize;
    /// Most tokens of a lead piece.
    fn max_chunk(&self) -> usize;
    /// Most tokens per call (lead piece and rows together).
    fn max_tokens(&self) -> usize {
        self.max_batch().max(self.max_chunk())
    }
    /// Zeroes a slot before its next use.
    fn reset(&mut self, slot: SlotId) -> Result<(), GpuError>;
    /// Submits one call over a lead piece and one-token rows, each sequence in its own slot
    /// (see [`GpuModel::submit`]; at most two in flight, a row may take its token from the
    /// last call's greedy tokens).
    fn submit(&mut self, lead: Option<Lead<'_>>, rows: &[StepRow]) -> Result<(), GpuError>;
    /// Reads back the oldest call in flight: each sequence's greedy token into `argmax`, the
    /// logits of those that want them into `logits`, in sequence order, the lead's first.
    fn finish(&mut self, argmax: &mut [TokenId], logits: &mut [f32]) -> Result<(), GpuError>;
}

impl Stepper for GpuModel {
    fn vocab(&self) -> usize {
        GpuModel::vocab(self)
    }
    fn slots(&self) -> u32 {
        GpuModel::slots(self)
    }
    fn max_batch(&self) -> usize {
        GpuModel::max_batch(self) as usize
    }
    fn max_chunk(&self) -> usize {
        GpuModel::max_chunk(self) as usize
    }
    fn reset(&mut self, slot: SlotId) -> Result<(), GpuError> {
        GpuModel::reset(self, slot)
    }
    fn submit(&mut self, lead: Option<Lead<'_>>, rows: &[StepRow]) -> Result<(), GpuError> {
        GpuModel::submit(self, lead, rows)
    }
    fn finish(&mut self, argmax: &mut [TokenId], logits: &mut [f32]) -> Result<(), GpuError> {
        GpuModel::finish(self, argmax, logits)
    }
}

/// The answer to one compute: the logits, or the greedy token.
type Answer = Result<Output, NnError>;

/// What contexts send the batcher.
enum Msg {
    /// Run `tokens` on `slot` and answer on `reply`.
    Compute(Job),
    /// The slot's context is gone: reset it and free it.
    Release(SlotId),
}

/// A greedy run's tokens on their way to its context, each as it is read back, or the error
/// that ended the run.
type RunItem = Result<TokenId, NnError>;

/// Where a job's answer goes.
enum Reply {
    /// One answer: the logits, or all the greedy tokens at once (those so far in `got`).
    Once { tx: oneshot::Sender<Answer>, got: Vec<TokenId> },
    /// A greedy run (the contract's `"greedy-run"`): each token as soon as it is read back, so
    /// the guest takes them while the run goes on. At most [`super::contract::MAX_GREEDY_RUN`] of them
    /// wait in the channel.
    Run(tokio::sync::mpsc::UnboundedSender<RunItem>),
}

impl Reply {
    /// One answer, for the logits or every greedy token at once.
    fn once(tx: oneshot::Sender<Answer>, greedy: u32) -> Self {
        Self::Once { tx, got: Vec::with_capacity(greedy as usize) }
    }

    /// Whether nobody waits for the answer any more (the context is gone).
    fn is_closed(&self) -> bool {
        match self {
            Self::Once { tx, .. } => tx.is_closed(),
            Self::Run(tx) => tx.is_closed(),
        }
    }

    /// A greedy token that is not the job's last.
    fn token(&mut self, id: TokenId) {
        match self {
            Self::Once { got, .. } => got.push(id),
            // A closed channel only means the context went away; the job is dropped next turn.
            Self::Run(tx) => drop(tx.send(Ok(id))),
        }
    }

    /// Answers a job whose last token was a stop token, read back with the call before this
    /// one: what it got, without this call's token. False if nobody received it.
    fn stopped(self) -> bool {
        match self {
            Self::Once { tx, got } => tx.send(Ok(Output::Tokens(got))).is_ok(),
            // The stop token went out already; dropping the sender ends the run.
            Self::Run(tx) => !tx.is_closed(),
        }
    }

    /// The job's error; false if nobody received it.
    fn fail(self, e: &GpuError) -> bool {
        let e = NnError::Backend(e.to_string());
        match self {
            Self::Once { tx, .. } => tx.send(Err(e)).is_ok(),
            Self::Run(tx) => tx.send(Err(e)).is_ok(),
        }
    }
}

/// One compute request.
struct Job {
    slot: SlotId,
    tokens: Vec<TokenId>,
    /// Greedy tokens still to produce instead of the logits (0: the logits; see the contract):
    /// after each but the last the job feeds its token back as a decode row by itself.
    greedy: u32,
    /// Stop tokens: the greedy tokens end with the first of them (the contract's
    /// `"greedy-stop"`).
    stop: Vec<TokenId>,
    /// Whether its last token was a stop token, read back while a call that feeds it was in
    /// flight: that call's token is not wanted.
    stopped: bool,
    reply: Reply,
    /// When the context sent it (for the batcher's timings).
    sent: Instant,
}

impl Job {
    /// A job for `tokens` on `slot` with `greedy` greedy tokens (0: the logits) and stop tokens
    /// `stop`, sent now.
    fn new(slot: SlotId, tokens: Vec<TokenId>, (greedy, stop): (u32, &[TokenId]), reply: Reply) -> Self {
        Job { slot, tokens, greedy, stop: stop.to_vec(), stopped: false, reply, sent: Instant::now() }
    }

    /// Whether, after a call gave it `id`, the job runs on (a greedy run with tokens still to
    /// produce, `id` not a stop token) rather than being answered.
    fn runs_on(&self, result: &Result<(), GpuError>, id: TokenId) -> bool {
        result.is_ok() && self.greedy > 1 && !self.stop.contains(&id)
    }

    /// Takes `id`, a greedy token that is not its last unless it is a stop token.
    fn take(&mut self, id: TokenId) {
        self.greedy -= 1;
        self.reply.token(id);
        self.stopped = self.stop.contains(&id);
    }

    /// Takes `id` and feeds it back: the job becomes a decode row of its own for its next token.
    fn feed_back(&mut self, id: TokenId) {
        self.take(id);
        self.tokens.clear();
        self.tokens.push(id);
        self.sent = Instant::now(); // ready again now (tinystate_nn_queue_seconds)
    }
}

/// The free slots, and a signal for contexts waiting for one.
#[derive(Default)]
struct FreeSlots {
    list: Mutex<Vec<SlotId>>,
    freed: tokio::sync::Notify,
}

/// A model on the GPU, shared by its contexts: the batcher's inbox and the free slots.
pub struct GpuBackend {
    tx: mpsc::Sender<Msg>,
    free: Arc<FreeSlots>,
    slots: u32,
    stats: Arc<NnStats>,
    /// How long [`Self::new_context`] waits for a slot when the caller has no other limit.
    slot_wait: Duration,
    /// The batcher thread, joined on drop (see `Drop`).
    batcher: Option<std::thread::JoinHandle<()>>,
}

impl GpuBackend {
    /// Starts the batcher thread for `model` (named after the model, for logs and debuggers);
    /// a new context waits up to `slot_wait` for a free slot ([`GpuBackend::slot_wait`]).
    pub fn start(
        name: &str,
        model: impl Stepper,
        stats: Arc<NnStats>,
        slot_wait: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let slots = model.slots();
        // Popped from the end: slot 0 is handed out first.
        let list = Mutex::new((0..slots).rev().map(SlotId).collect::<Vec<_>>());
        let free = Arc::new(FreeSlots { list, freed: tokio::sync::Notify::new() });
        let (tx, rx) = mpsc::channel();
        let batcher = Batcher::new(model, rx, free.clone(), stats.clone());
        let batcher =
            std::thread::Builder::new().name(format!("nn-gpu-{name}")).spawn(move || batcher.run())?;
        Ok(Arc::new(Self { tx, free, slots, stats, slot_wait, batcher: Some(batcher) }))
    }

    /// How long a new context waits for a free slot (`--nn-slot-wait`).
    pub fn slot_wait(&self) -> Duration {
        self.slot_wait
    }

    /// A fresh sequence in a free slot, waiting up to `wait` for one when all are taken.
    pub async fn new_context(self: &Arc<Self>, wait: Duration) -> Result<GpuContext, NnError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the look at the list, so a slot freed in between still wakes us.
            let freed = self.free.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = lock(&self.free.list).pop() {
                self.stats.slots_in_use.fetch_add(1, Ordering::Relaxed);
                return Ok(GpuContext { backend: self.clone(), slot, waiting: None, run: None });
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(NnError::NoFreeSlot { slots: self.slots });
            }
        }
    }
}

impl Drop for GpuBackend {
    /// Closes the inbox and waits for the batcher to finish its calls and drop the device.
    /// Without the wait the device could still be tearing down when the process exits, racing
    /// the graphics driver's own exit-time clean-up (a SIGSEGV after the last test, seen with
    /// lavapipe in CI).
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(batcher) = self.batcher.take()
            && batcher.join().is_err()
        {
            tracing::error!("the GPU batcher thread panicked");
        }
    }
}

/// Locks the free list; a poisoned lock only means a thread panicked holding it (the list is
/// still whole: every change is a single push or pop).
fn lock(free: &Mutex<Vec<SlotId>>) -> std::sync::MutexGuard<'_, Vec<SlotId>> {
    free.lock().unwrap_or_else(|e| e.into_inner())
}

/// One sequence in a GPU state slot; dropping it frees the slot.
pub struct GpuContext {
    backend: Arc<GpuBackend>,
    slot: SlotId,
    /// The reply of a compute whose future was dropped before it came.
    waiting: Option<oneshot::Receiver<Answer>>,
    /// The tokens of the greedy run under way, as the batcher reads them back.
    run: Option<tokio::sync::mpsc::UnboundedReceiver<RunItem>>,
}

impl GpuContext {
    /// Runs `tokens` (already checked against the vocabulary) in this context's slot and
    /// returns the last logits, or with `greedy` n ≥ 1 the n greedy tokens (each fed back before
    /// the next, by the batcher, without a round trip to the guest).
    pub async fn compute(&mut self, tokens: Vec<TokenId>, greedy: u32, stop: &[TokenId]) -> Answer {
        self.usable()?;
        self.run = None; // a run the caller has taken whole
        let (tx, rx) = oneshot::channel();
        self.send(tokens, (greedy, stop), Reply::once(tx, greedy))?;
        let rx = self.waiting.insert(rx);
        let answer = rx.await;
        self.waiting = None;
        answer.map_err(|_| NnError::Backend("the GPU batcher dropped the request".into()))?
    }

    /// Starts a greedy run of `run` tokens after `tokens` (the batcher feeds each back as a
    /// decode row, whether or not the caller has taken it yet) and returns its first 1 to
    /// `greedy` tokens ([`GpuContext::take_run`]). The run ends early with the first of `stop`.
    pub async fn start_run(
        &mut self,
        tokens: Vec<TokenId>,
        greedy: u32,
        run: u32,
        stop: &[TokenId],
    ) -> Answer {
        self.usable()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.send(tokens, (run, stop), Reply::Run(tx))?;
        self.run = Some(rx);
        self.take_run(greedy).await
    }

    /// The next 1 to `most` tokens of the run under way: those read back already, or else the
    /// next one when it is. A failed call ends the run with its error.
    pub async fn take_run(&mut self, most: u32) -> Answer {
        let rx = self.run.as_mut().ok_or_else(|| NnError::Backend("no greedy run under way".into()))?;
        // Cancel-safe: a token is taken off the channel only when it is returned.
        let mut next = rx.recv().await;
        let mut out = Vec::with_capacity(most as usize);
        while let Some(item) = next {
            match item {
                Ok(id) => out.push(id),
                Err(e) => {
                    self.run = None;
                    return Err(e);
                }
            }
            next = if out.len() < most as usize { rx.try_recv().ok() } else { None };
        }
        if out.is_empty() {
            self.run = None;
            return Err(NnError::Backend("the GPU batcher ended the greedy run early".into()));
        }
        Ok(Output::Tokens(out))
    }

    /// Fails if an earlier compute was cancelled: the state may or may not hold its chunk, so
    /// it is no longer a sequence.
    fn usable(&self) -> Result<(), NnError> {
        match self.waiting {
            Some(_) => Err(NnError::Backend("an earlier compute on this context was cancelled".into())),
            None => Ok(()),
        }
    }

    /// Sends a job for this context's slot to the batcher: its tokens, its greedy tokens and
    /// stop tokens, and where its answer goes.
    fn send(&self, tokens: Vec<TokenId>, greedy: (u32, &[TokenId]), reply: Reply) -> Result<(), NnError> {
        self.backend
            .tx
            .send(Msg::Compute(Job::new(self.slot, tokens, greedy, reply)))
            .map_err(|_| NnError::Backend("the GPU batcher has stopped".into()))
    }
}

impl Drop for GpuContext {
    fn drop(&mut self) {
        // Through the batcher, after any work queued for the slot; if the batcher is gone the
        // slot goes with it.
        let _ = self.backend.tx.send(Msg::Release(self.slot));
    }
}

/// Answers one sequence of a call: its greedy tokens (`id` the last of them), or the next of
/// the wanted logits rows packed in `logits` (rows of `vocab`; `k` counts those already taken),
/// or the call's error. False if nobody received it (the context went away meanwhile).
fn answer_row(
    job: Job,
    result: &Result<(), GpuError>,
    id: TokenId,
    (logits, vocab): (&[f32], usize),
    k: &mut usize,
) -> bool {
    match (job.reply, result) {
        (reply, Err(e)) => reply.fail(e),
        (Reply::Run(tx), Ok(())) => tx.send(Ok(id)).is_ok(),
        (Reply::Once { tx, mut got }, Ok(())) if job.greedy > 0 => {
            got.push(id);
            tx.send(Ok(Output::Tokens(got))).is_ok()
        }
        (Reply::Once { tx, .. }, Ok(())) => {
            let row = &logits[*k * vocab..(*k + 1) * vocab];
            *k += 1;
            tx.send(Ok(Output::Logits(logits_bytes(row)))).is_ok()
        }
    }
}

/// A prefill request, how many of its tokens have been submitted, and a number that names it.
struct Prefill {
    job: Job,
    done: usize,
    serial: u64,
}

/// What a sequence of a submitted call does with its result.
enum Seq {
    /// A job answered with this result, or fed back as a decode row if it runs on and no later
    /// call took it. `fed`: its token is the greedy token of sequence k of the call before,
    /// which becomes one of its tokens when that call is read back.
    Job { job: Job, fed: Option<u32> },
    /// A job that runs on in the next call, fed there on the GPU ([`Feed::Greedy`]).
    Moved,
    /// A piece of the prompt with this serial that has tokens left: nothing to answer unless
    /// the call fails.
    Piece(u64),
}

/// A submitted call, not yet read back.
struct Flight {
    /// In call order: the lead, then the rows.
    seqs: Vec<Seq>,
    /// Their slots (the streams `linger` need not wait for).
    slots: Vec<SlotId>,
    /// Sequences that want logits.
    wanted: usize,
    /// When it was submitted.
    submitted: Instant,
    /// Whether the model took it (then it is read back, whatever `failed` says).
    on_gpu: bool,
    /// Why it fails whatever the GPU says: its submission failed, or the call before it failed.
    failed: Option<GpuError>,
}

/// The batcher thread's state. Buffers are sized once; a turn allocates only the replies and
/// its call's record (a [`Flight`]).
struct Batcher<M> {
    model: M,
    rx: mpsc::Receiver<Msg>,
    free: Arc<FreeSlots>,
    stats: Arc<NnStats>,
    vocab: usize,
    /// One-token computes, in arrival order.
    decodes: VecDeque<Job>,
    /// Longer computes, in arrival order.
    prefills: VecDeque<Prefill>,
    /// The next prompt's serial.
    serial: u64,
    /// Slots whose contexts are gone, freed at the end of the turn.
    releases: Vec<SlotId>,
    /// The call being built: its rows (max_batch,), the decode jobs' (`batch`), then the riders'.
    rows: Vec<StepRow>,
    batch: Vec<Job>,
    /// Index in `prefills` of the prompt whose piece leads this call, and the piece's length.
    lead: Option<(usize, usize)>,
    /// Indices in `prefills` of the prompts riding this call, in row order after `batch`.
    riders: Vec<usize>,
    /// Prompts with at most this many tokens left ride along steps ([`RIDE_MAX_TOKENS`]).
    ride_max: usize,
    /// Most tokens of a lead piece while others decode ([`LEAD_PIECE`]).
    lead_max: usize,
    /// Slots with a decode row in the last two steps: the streams `linger` waits for.
    recent: Vec<SlotId>,
    /// The slots of the step before the last (to build `recent`).
    before: Vec<SlotId>,
    /// Scratch for `linger` (slots,).
    expected: Vec<bool>,
    /// How long the last call took on the GPU.
    last_step: Duration,
    /// When the last call was read back.
    last_done: Option<Instant>,
    /// Cap on `linger` ([`MAX_LINGER`]).
    max_linger: Duration,
    /// Whether a slot already has a sequence in this call (slots,).
    in_batch: Vec<bool>,
    /// Greedy tokens, one per sequence (max_batch,).
    ids: Vec<TokenId>,
    /// Logits of the sequences that want them (up to max_batch, vocab).
    logits: Vec<f32>,
    /// When each slot's last compute was answered (slots,), for `tinystate_nn_turnaround_seconds`.
    answered: Vec<Option<Instant>>,
    /// Submitted calls, oldest first (at most two: one on the GPU, one queued behind it).
    flights: VecDeque<Flight>,
}

impl<M: Stepper> Batcher<M> {
    fn new(model: M, rx: mpsc::Receiver<Msg>, free: Arc<FreeSlots>, stats: Arc<NnStats>) -> Self {
        let (vocab, max_batch, slots) = (model.vocab(), model.max_batch(), model.slots() as usize);
        Self {
            rx,
            free,
            stats,
            vocab,
            decodes: VecDeque::new(),
            prefills: VecDeque::new(),
            serial: 0,
            releases: Vec::new(),
            rows: Vec::with_capacity(max_batch),
            batch: Vec::with_capacity(max_batch),
            lead: None,
            riders: Vec::with_capacity(max_batch),
            ride_max: RIDE_MAX_TOKENS,
            lead_max: LEAD_PIECE,
            recent: Vec::with_capacity(2 * max_batch),
            before: Vec::with_capacity(max_batch),
            expected: vec![false; slots],
            last_step: Duration::ZERO,
            last_done: None,
            max_linger: MAX_LINGER,
            in_batch: vec![false; slots],
            ids: vec![TokenId(0); max_batch],
            logits: vec![0.0; max_batch * vocab],
            answered: vec![None; slots],
            flights: VecDeque::with_capacity(2),
            model,
        }
    }

    /// Runs until every context and the backend are gone.
    fn run(mut self) {
        while self.pass() {}
        while !self.flights.is_empty() {
            self.complete();
        }
    }

    /// One pass of the loop; false when the inbox is closed and no work is left. Each pass
    /// submits the next call and then reads back the one before it, so the GPU runs them back
    /// to back: a call is built, and the streams it waits for linger, while the one before runs.
    fn pass(&mut self) -> bool {
        if !self.gather() {
            return false;
        }
        let submitted = self.turn();
        if self.flights.len() > 1 || (!submitted && !self.flights.is_empty()) {
            self.complete();
        }
        self.free_released();
        true
    }

    /// Takes every waiting message, blocking first if there is nothing to do. False when the
    /// channel is closed and no work is left.
    fn gather(&mut self) -> bool {
        if self.decodes.is_empty() && self.prefills.is_empty() && self.flights.is_empty() {
            let idle = Instant::now();
            match self.recv(None) {
                Ok(m) => self.accept(m),
                Err(_) => return false,
            }
            self.stats.idle_seconds.observe(idle.elapsed().as_secs_f64());
        }
        while let Ok(m) = self.rx.try_recv() {
            self.accept(m);
        }
        self.linger();
        true
    }

    /// Waits, up to half the last call's time, until every slot that decoded in the last two
    /// steps has its next token queued. Guests answer a step at different speeds: without the
    /// wait, the early half of the streams starts a step and the late half the next one, so
    /// steps stay half full (H200, HTTP: 4 rows per step at 8 streams, 52 at 256).
    fn linger(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let start = Instant::now();
        self.linger_until(start + (self.last_step / 2).min(self.max_linger));
        // Observed even when nothing was missing: the count is the number of lingers.
        self.stats.linger_seconds.observe(start.elapsed().as_secs_f64());
    }

    /// `linger` until `deadline`.
    fn linger_until(&mut self, deadline: Instant) {
        loop {
            for s in &self.recent {
                if let Some(mark) = self.expected.get_mut(s.0 as usize) {
                    *mark = true;
                }
            }
            for j in &self.decodes {
                if let Some(mark) = self.expected.get_mut(j.slot.0 as usize) {
                    *mark = false;
                }
            }
            // Streams in a call still running run on in the next or are answered after it.
            let flying = self.flights.iter().flat_map(|f| &f.slots);
            for s in self.releases.iter().chain(flying) {
                if let Some(mark) = self.expected.get_mut(s.0 as usize) {
                    *mark = false;
                }
            }
            let missing =
                self.recent.iter().any(|s| self.expected.get(s.0 as usize).copied().unwrap_or(false));
            self.expected.iter_mut().for_each(|m| *m = false);
            let left = deadline.saturating_duration_since(Instant::now());
            if !missing || left.is_zero() {
                return;
            }
            match self.recv(Some(Instant::now() + left)) {
                Ok(m) => self.accept(m),
                Err(_) => return,
            }
            while let Ok(m) = self.rx.try_recv() {
                self.accept(m);
            }
        }
    }

    /// The next message, waiting until `deadline` (None: for ever). Polls for up to
    /// [`SPIN_BEFORE_SLEEP`] before it sleeps: a guest usually answers within that (H200 host:
    /// 80 µs from an answer to the next compute at one stream), and a sleeping thread wakes tens
    /// of µs late, on the critical path of every token.
    fn recv(&self, deadline: Option<Instant>) -> Result<Msg, mpsc::RecvTimeoutError> {
        let spin_until = Instant::now() + SPIN_BEFORE_SLEEP;
        let spin_until = deadline.map_or(spin_until, |d| d.min(spin_until));
        loop {
            match self.rx.try_recv() {
                Ok(m) => return Ok(m),
                Err(mpsc::TryRecvError::Disconnected) => return Err(mpsc::RecvTimeoutError::Disconnected),
                Err(mpsc::TryRecvError::Empty) if Instant::now() < spin_until => std::hint::spin_loop(),
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        match deadline {
            None => self.rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(d) => self.rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        }
    }

    fn accept(&mut self, m: Msg) {
        match m {
            Msg::Compute(job) if job.tokens.len() == 1 => {
                if let Some(Some(at)) = self.answered.get(job.slot.0 as usize) {
                    let turn = job.sent.saturating_duration_since(*at);
                    self.stats.turnaround_seconds.observe(turn.as_secs_f64());
                }
                self.decodes.push_back(job)
            }
            Msg::Compute(job) => {
                self.serial += 1;
                self.prefills.push_back(Prefill { job, done: 0, serial: self.serial });
            }
            Msg::Release(slot) => self.releases.push(slot),
        }
    }

    /// Builds and submits one call: the greedy runs that go on from the call still in flight
    /// (fed on the GPU), every waiting decode (up to max_batch, one row per slot, one sequence
    /// left for a waiting prompt), a lead piece and riders. False when nothing was runnable.
    fn turn(&mut self) -> bool {
        self.prefills.retain(|p| !p.job.reply.is_closed());
        let max = self.model.max_batch();
        // One sequence is kept for a waiting prompt, so decodes cannot starve it.
        let decode_max = if self.prefills.is_empty() { max } else { max - 1 };
        self.take_running(decode_max);
        self.take_decodes(decode_max);
        let decoding = !self.batch.is_empty();
        self.pick_lead(max);
        self.add_riders(max);
        self.size_lead();
        if self.rows.is_empty() && self.lead.is_none() {
            if self.flights.is_empty() {
                // No stream decoded this turn: none to wait for.
                self.recent.clear();
                self.before.clear();
            }
            self.in_batch.iter_mut().for_each(|m| *m = false);
            return false;
        }
        let n = usize::from(self.lead.is_some()) + self.rows.len();
        self.stats.batch_size.observe(n as f64);
        let t = Instant::now();
        // Rows fed on the GPU did not queue.
        for (job, row) in self.batch.iter().zip(&self.rows) {
            if let Feed::Token(_) = row.token {
                self.stats.queue_seconds.observe(t.saturating_duration_since(job.sent).as_secs_f64());
            }
        }
        // The streams to wait for before the next step: this step's and the last one's (none
        // after a call without decodes).
        self.recent.clear();
        if decoding {
            self.recent.extend_from_slice(&self.before);
            self.before.clear();
            self.before.extend(self.batch.iter().map(|j| j.slot));
            self.recent.extend_from_slice(&self.before);
            self.recent.sort_unstable_by_key(|s| s.0);
            self.recent.dedup();
        } else {
            self.before.clear();
        }
        self.submit(t);
        true
    }

    /// Rows for the greedy runs that go on after the last call submitted, if it is still in
    /// flight: each takes its token from that call's greedy token on the GPU, so this call can
    /// go in before that one is read back. Up to `max` rows.
    fn take_running(&mut self, max: usize) {
        let Some(last) = self.flights.back_mut() else { return };
        if last.failed.is_some() {
            return;
        }
        for (k, seq) in last.seqs.iter_mut().enumerate() {
            if self.batch.len() == max {
                break;
            }
            let Seq::Job { job, .. } = seq else { continue };
            if job.greedy <= 1 || job.stopped || job.reply.is_closed() {
                continue;
            }
            let Seq::Job { job, .. } = std::mem::replace(seq, Seq::Moved) else { continue };
            self.in_batch[job.slot.0 as usize] = true;
            self.rows.push(StepRow { slot: job.slot, token: Feed::Greedy(k as u32), logits: false });
            self.batch.push(job);
        }
    }

    /// Queues every waiting decode as a row, up to `max`, one per slot; visits each queued job
    /// once, and those left for a later step keep their order.
    fn take_decodes(&mut self, max: usize) {
        for _ in 0..self.decodes.len() {
            let Some(job) = self.decodes.pop_front() else { break };
            if job.reply.is_closed() {
                continue; // the caller is gone; nobody wants these logits
            }
            let slot = job.slot.0 as usize;
            if self.batch.len() == max || self.in_batch.get(slot).copied().unwrap_or(false) {
                self.decodes.push_back(job);
                continue;
            }
            if let Some(mark) = self.in_batch.get_mut(slot) {
                *mark = true;
            }
            let token = Feed::Token(job.tokens[0]);
            self.rows.push(StepRow { slot: job.slot, token, logits: job.greedy == 0 });
            self.batch.push(job);
        }
    }

    /// Picks the lead: the oldest prompt whose slot has no row yet and, while others decode,
    /// that is too long to ride. Its piece is sized after the riders ([`Batcher::size_lead`]).
    fn pick_lead(&mut self, max: usize) {
        let decoding = !self.rows.is_empty();
        if self.rows.len() >= max {
            return;
        }
        let (ride_max, in_batch) = (self.ride_max, &self.in_batch);
        let at = self.prefills.iter().position(|p| {
            let left = p.job.tokens.len() - p.done;
            !in_batch.get(p.job.slot.0 as usize).copied().unwrap_or(true) && (!decoding || left > ride_max)
        });
        if let Some(at) = at {
            self.in_batch[self.prefills[at].job.slot.0 as usize] = true;
            self.lead = Some((at, 0));
        }
    }

    /// Adds a row for the next token of each short prompt (oldest first) other than the lead,
    /// while the call has room (a sequence and a token kept for the lead) and the prompt's slot
    /// has no row yet.
    fn add_riders(&mut self, max: usize) {
        let lead = self.lead.map(|(i, _)| i);
        let keep = usize::from(lead.is_some());
        let room = (max - keep).min(self.model.max_tokens() - keep);
        for (i, p) in self.prefills.iter().enumerate() {
            if self.rows.len() >= room {
                break;
            }
            let left = p.job.tokens.len() - p.done;
            let slot = p.job.slot.0 as usize;
            if Some(i) == lead
                || left > self.ride_max
                || p.job.reply.is_closed()
                || self.in_batch.get(slot).copied().unwrap_or(true)
            {
                continue;
            }
            self.in_batch[slot] = true;
            self.rows.push(StepRow {
                slot: p.job.slot,
                token: Feed::Token(p.job.tokens[p.done]),
                logits: left == 1 && p.job.greedy == 0,
            });
            self.riders.push(i);
        }
    }

    /// The lead's piece: what is left of its prompt, at most [`LEAD_PIECE`] tokens while others
    /// decode (else `max_chunk`) and the tokens the rows leave.
    fn size_lead(&mut self) {
        let Some((at, _)) = self.lead else { return };
        let decoding = !self.batch.is_empty();
        let cap = if decoding { self.lead_max.min(self.model.max_chunk()) } else { self.model.max_chunk() };
        let p = &self.prefills[at];
        let room = self.model.max_tokens().saturating_sub(self.rows.len());
        let piece = (p.job.tokens.len() - p.done).min(cap).min(room);
        self.lead = (piece > 0).then_some((at, piece));
    }

    /// Submits the call built (the lead piece, then `rows`) and records what each sequence
    /// does with its result; the prompts in it advance now, so the next call can take their
    /// next pieces. A submission that fails is answered with its error when read back.
    fn submit(&mut self, t: Instant) {
        let lead = self.lead.map(|(i, k)| {
            let p = &self.prefills[i];
            let end = p.done + k;
            let last = end == p.job.tokens.len();
            Lead { slot: p.job.slot, tokens: &p.job.tokens[p.done..end], logits: last && p.job.greedy == 0 }
        });
        let wanted = logits_wanted(lead, &self.rows);
        // Logged when read back (`complete`), as every failed call is.
        let failed = self.model.submit(lead, &self.rows).err();
        let mut slots: Vec<SlotId> = Vec::with_capacity(self.rows.len() + 1);
        let mut seqs = Vec::with_capacity(self.rows.len() + 1);
        // Prompts that ran their last token leave the queue, highest index first afterwards.
        let mut finished = Vec::new();
        let mut advance = |p: &mut Prefill, i: usize, by: usize, seqs: &mut Vec<Seq>| {
            p.done += by;
            if p.done == p.job.tokens.len() {
                finished.push((i, seqs.len()));
                seqs.push(Seq::Moved); // the job, once out of the queue
            } else {
                seqs.push(Seq::Piece(p.serial));
            }
        };
        if let Some((i, piece)) = self.lead.take() {
            slots.push(self.prefills[i].job.slot);
            advance(&mut self.prefills[i], i, piece, &mut seqs);
        }
        // The decode rows lead `rows`, in `batch` order.
        for (job, row) in self.batch.drain(..).zip(&self.rows) {
            let fed = match row.token {
                Feed::Greedy(k) => Some(k),
                Feed::Token(_) => None,
            };
            slots.push(job.slot);
            seqs.push(Seq::Job { job, fed });
        }
        for &i in &self.riders {
            slots.push(self.prefills[i].job.slot);
            advance(&mut self.prefills[i], i, 1, &mut seqs);
        }
        self.riders.clear();
        finished.sort_unstable_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, at) in finished {
            if let Some(p) = self.prefills.remove(i) {
                seqs[at] = Seq::Job { job: p.job, fed: None };
            }
        }
        self.in_batch.iter_mut().for_each(|m| *m = false);
        self.rows.clear();
        let on_gpu = failed.is_none();
        self.flights.push_back(Flight { seqs, slots, wanted, submitted: t, on_gpu, failed });
    }

    /// Reads back the oldest call in flight and answers its sequences (all with the error if it
    /// failed). A greedy job with tokens still to produce that no later call took goes back on
    /// the decode queue with its new token; those the next call took get their token now.
    fn complete(&mut self) {
        let Some(mut f) = self.flights.pop_front() else { return };
        let (n, v) = (f.seqs.len(), self.vocab);
        // A call that never went in has nothing to read back.
        let read = if f.on_gpu {
            self.model.finish(&mut self.ids[..n], &mut self.logits[..f.wanted * v])
        } else {
            Ok(())
        };
        let result = match f.failed.take() {
            Some(e) => Err(e),
            None => read,
        };
        let done = Instant::now();
        // GPU time: since it was submitted, or since the call before it ended if it queued.
        let from = self.last_done.map_or(f.submitted, |d| d.max(f.submitted));
        self.last_step = done.saturating_duration_since(from);
        self.last_done = Some(done);
        self.stats.step_seconds.observe(self.last_step.as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(rows = n, "wasi-nn GPU call failed: {e}");
        }
        if let Some(next) = self.flights.front_mut() {
            match &result {
                Ok(()) => {
                    for seq in &mut next.seqs {
                        if let Seq::Job { job, fed: Some(k) } = seq {
                            job.take(self.ids[*k as usize]);
                        }
                    }
                }
                // The call queued behind this one fails with it: its rows may have taken tokens
                // from it, and its prompts' pieces ran on states this one left unfinished.
                Err(e) => {
                    next.failed.get_or_insert_with(|| e.clone());
                }
            }
        }
        // Outputs are in sequence order; the wanted logits rows are packed in that order: the
        // k-th such row is row k of `logits`.
        let mut k = 0;
        for (i, seq) in f.seqs.into_iter().enumerate() {
            match seq {
                Seq::Moved => {}
                Seq::Piece(serial) => {
                    if let Err(e) = &result
                        && let Some(at) = self.prefills.iter().position(|p| p.serial == serial)
                        && let Some(p) = self.prefills.remove(at)
                    {
                        p.job.reply.fail(e);
                    }
                }
                Seq::Job { job, .. } if job.stopped => {
                    let slot = job.slot.0 as usize;
                    if job.reply.stopped() {
                        self.answered[slot] = Some(Instant::now());
                    }
                }
                Seq::Job { mut job, .. } => {
                    let id = self.ids[i];
                    if job.runs_on(&result, id) {
                        job.feed_back(id);
                        self.decodes.push_back(job);
                        continue;
                    }
                    let slot = job.slot.0 as usize;
                    if answer_row(job, &result, id, (&self.logits, v), &mut k) {
                        self.answered[slot] = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Resets and frees the slots of dropped contexts, dropping work still queued for them.
    fn free_released(&mut self) {
        while let Some(slot) = self.releases.pop() {
            self.answered[slot.0 as usize] = None;
            self.decodes.retain(|j| j.slot != slot);
            self.prefills.retain(|p| p.job.slot != slot);
            if let Err(e) = self.model.reset(slot) {
                // Never hand out a slot that may hold another request's state.
                tracing::error!(slot = slot.0, "wasi-nn GPU slot reset failed; slot retired: {e}");
                continue;
            }
            lock(&self.free.list).push(slot);
            self.free.freed.notify_waiters();
            self.stats.slots_in_use.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_file::ModelFile;
    use crate::nn::cpu::{CpuContext, CpuModel};
    use tinystate_engine::arch::mamba::{Mamba, Scratch, State};
    use tinystate_engine::gguf::Gguf;
    use tinystate_engine::sampler::argmax;

    /// A call the twin saw.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Call {
        /// (slot, wants logits) per row.
        Step(Vec<(u32, bool)>),
        /// A lead piece alone: slot, tokens, wants logits.
        Prefill(u32, usize, bool),
        /// A lead piece (slot, tokens, wants logits) and rows.
        Mixed((u32, usize, bool), Vec<(u32, bool)>),
        Reset(u32),
    }

    /// A step in which every row wants logits.
    fn logits_step(slots: &[u32]) -> Call {
        Call::Step(slots.iter().map(|&s| (s, true)).collect())
    }

    /// A call's ids and packed logits.
    type TwinOut = (Vec<TokenId>, Vec<f32>);

    /// The CPU twin of a [`GpuModel`]: the engine's Mamba with one [`State`] per slot.
    struct Twin {
        model: Mamba<'static>,
        states: Vec<State>,
        scratch: Scratch,
        max_batch: usize,
        max_chunk: usize,
        calls: Arc<Mutex<Vec<Call>>>,
        /// Fail the next call with a device-lost error.
        fail_next: bool,
        /// Results of the calls submitted and not read back.
        flights: VecDeque<Result<TwinOut, GpuError>>,
        /// The last call's greedy tokens ([`Feed::Greedy`] reads them).
        last_ids: Vec<TokenId>,
        /// Rows fed on the GPU so far.
        fed_greedy: usize,
        /// Set when the twin is dropped (after a pause, as a device's teardown takes time).
        dropped: Option<Arc<std::sync::atomic::AtomicBool>>,
        /// The most calls in flight at once so far.
        most_in_flight: usize,
    }

    fn tiny() -> Mamba<'static> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../engine/tests/fixtures/parity/tiny/model-f32.gguf");
        let file: &'static ModelFile = Box::leak(Box::new(ModelFile::open(&path).expect("open tiny")));
        Mamba::load(&Gguf::parse(file.bytes()).expect("parse tiny")).expect("load tiny")
    }

    impl Twin {
        fn new(slots: u32, max_batch: usize, max_chunk: usize) -> Self {
            let model = tiny();
            let c = model.config;
            Self {
                states: (0..slots).map(|_| State::new(&c)).collect(),
                scratch: Scratch::new(&c, max_chunk),
                model,
                max_batch,
                max_chunk,
                calls: Arc::default(),
                fail_next: false,
                flights: VecDeque::new(),
                last_ids: Vec::new(),
                fed_greedy: 0,
                most_in_flight: 0,
                dropped: None,
            }
        }

        fn failing(&mut self) -> Result<(), GpuError> {
            if std::mem::take(&mut self.fail_next) {
                Err(GpuError::DeviceLost("test".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Stepper for Twin {
        fn vocab(&self) -> usize {
            self.model.config.vocab
        }
        fn slots(&self) -> u32 {
            self.states.len() as u32
        }
        fn max_batch(&self) -> usize {
            self.max_batch
        }
        fn max_chunk(&self) -> usize {
            self.max_chunk
        }
        fn reset(&mut self, slot: SlotId) -> Result<(), GpuError> {
            self.calls.lock().unwrap().push(Call::Reset(slot.0));
            self.states[slot.0 as usize].reset();
            Ok(())
        }
        fn submit(&mut self, lead: Option<Lead<'_>>, rows: &[StepRow]) -> Result<(), GpuError> {
            assert!(self.flights.len() < tinystate_gpu::MAX_IN_FLIGHT, "too many calls in flight");
            let row_calls = rows.iter().map(|r| (r.slot.0, r.logits)).collect();
            let call = match lead {
                Some(l) if rows.is_empty() => Call::Prefill(l.slot.0, l.tokens.len(), l.logits),
                Some(l) => Call::Mixed((l.slot.0, l.tokens.len(), l.logits), row_calls),
                None => Call::Step(row_calls),
            };
            self.calls.lock().unwrap().push(call);
            let v = self.vocab();
            // The GPU's layout: an id per sequence (the lead's first), logits packed for those
            // that want them.
            let k0 = lead.map_or(0, |l| l.tokens.len());
            assert!(k0 <= self.max_chunk, "a piece of {k0} tokens");
            assert!(k0 + rows.len() <= self.max_tokens(), "{} tokens in one call", k0 + rows.len());
            let seqs = rows.len() + usize::from(lead.is_some());
            assert!(seqs <= self.max_batch, "{seqs} sequences in one call");
            // Rows fed on the GPU take the last call's greedy tokens, as the GPU does.
            let fed: Vec<TokenId> = rows
                .iter()
                .map(|r| match r.token {
                    Feed::Token(t) => t,
                    // After a failed call the GPU would read stale tokens.
                    Feed::Greedy(k) => self.last_ids.get(k as usize).copied().unwrap_or(TokenId(0)),
                })
                .collect();
            self.fed_greedy += rows.iter().filter(|r| matches!(r.token, Feed::Greedy(_))).count();
            let result = self.failing().map(|()| {
                let seqs = lead.iter().map(|l| (l.slot, l.tokens, l.logits));
                let seqs = seqs
                    .chain(rows.iter().zip(&fed).map(|(r, t)| (r.slot, std::slice::from_ref(t), r.logits)));
                let (mut ids, mut logits) = (Vec::new(), Vec::new());
                for (slot, tokens, want) in seqs {
                    let state = &mut self.states[slot.0 as usize];
                    let out = self.model.forward(state, &mut self.scratch, tokens, true).expect("logits");
                    ids.push(argmax(out));
                    if want {
                        logits.extend_from_slice(&out[..v]);
                    }
                }
                (ids, logits)
            });
            self.last_ids = result.as_ref().map(|(ids, _)| ids.clone()).unwrap_or_default();
            self.flights.push_back(result);
            self.most_in_flight = self.most_in_flight.max(self.flights.len());
            Ok(())
        }
        fn finish(&mut self, ids: &mut [TokenId], logits: &mut [f32]) -> Result<(), GpuError> {
            let (got_ids, got_logits) = self.flights.pop_front().expect("a call in flight")?;
            assert_eq!(ids.len(), got_ids.len(), "one id per sequence");
            assert_eq!(logits.len(), got_logits.len(), "wanted rows × vocab");
            ids.copy_from_slice(&got_ids);
            logits.copy_from_slice(&got_logits);
            Ok(())
        }
    }

    impl Twin {
        /// A chunk alone, as `GpuModel::prefill`: its greedy token, its logits if asked.
        fn prefill(&mut self, slot: SlotId, tokens: &[TokenId], logits: Option<&mut [f32]>) -> TokenId {
            let lead = Lead { slot, tokens, logits: logits.is_some() };
            let mut id = [TokenId(0)];
            self.submit(Some(lead), &[]).unwrap();
            self.finish(&mut id, logits.unwrap_or_default()).unwrap();
            id[0]
        }
    }

    impl Drop for Twin {
        fn drop(&mut self) {
            if let Some(dropped) = &self.dropped {
                std::thread::sleep(Duration::from_millis(50));
                dropped.store(true, Ordering::SeqCst);
            }
        }
    }

    type Answer = oneshot::Receiver<super::Answer>;

    /// A batcher on `twin` driven by hand (no thread), and the sender of its inbox.
    fn batcher(twin: Twin) -> (Batcher<Twin>, mpsc::Sender<Msg>) {
        let (tx, rx) = mpsc::channel();
        (Batcher::new(twin, rx, Arc::default(), Arc::new(NnStats::new())), tx)
    }

    /// Sends a compute for the logits.
    fn send(tx: &mpsc::Sender<Msg>, slot: u32, tokens: &[u32]) -> Answer {
        send_job(tx, slot, tokens, false)
    }

    fn send_job(tx: &mpsc::Sender<Msg>, slot: u32, tokens: &[u32], greedy: bool) -> Answer {
        send_greedy(tx, slot, tokens, u32::from(greedy))
    }

    /// Sends a compute for `greedy` greedy tokens (0: the logits).
    fn send_greedy(tx: &mpsc::Sender<Msg>, slot: u32, tokens: &[u32], greedy: u32) -> Answer {
        let (reply, rx) = oneshot::channel();
        send_with(tx, (slot, tokens), (greedy, &[]), Reply::once(reply, greedy));
        rx
    }

    /// The logits of an answer for them, as floats.
    fn logits_of(a: super::Answer) -> Vec<f32> {
        match a {
            Ok(Output::Logits(b)) => floats(&b),
            other => panic!("expected logits, got {other:?}"),
        }
    }

    /// The token of an answer for it.
    fn token_of(a: super::Answer) -> TokenId {
        match tokens_of(a)[..] {
            [t] => t,
            ref other => panic!("expected one token, got {other:?}"),
        }
    }

    /// The tokens of an answer for greedy tokens.
    fn tokens_of(a: super::Answer) -> Vec<TokenId> {
        match a {
            Ok(Output::Tokens(t)) => t,
            other => panic!("expected tokens, got {other:?}"),
        }
    }

    /// One turn of the batcher's loop (blocks if nothing is queued), reading back every call
    /// at once: the calls are what they would be without calls in flight.
    fn turn(b: &mut Batcher<Twin>) {
        assert!(b.gather());
        b.turn();
        while !b.flights.is_empty() {
            b.complete();
        }
        b.free_released();
    }

    fn floats(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    #[test]
    fn a_call_takes_the_waiting_decodes_and_a_lead_piece_in_the_tokens_left() {
        let twin = Twin::new(8, 3, 4);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        b.ride_max = 0; // leads only (riding: its own test)
        let mut decodes: Vec<Answer> = (0..4).map(|s| send(&tx, s, &[s + 1])).collect();
        let mut long = send(&tx, 4, &[1; 10]);
        let mut short = send(&tx, 5, &[2; 3]);
        turn(&mut b);
        assert!(decodes[..2].iter_mut().all(|r| r.try_recv().is_ok_and(|a| a.is_ok())));
        assert!(decodes[2].try_recv().is_err(), "a sequence kept for the prompts: waits");
        turn(&mut b);
        assert!(decodes[2..].iter_mut().all(|r| r.try_recv().is_ok_and(|a| a.is_ok())));
        turn(&mut b);
        assert!(long.try_recv().is_err(), "8 of 10 tokens done");
        turn(&mut b);
        assert_eq!(logits_of(long.try_recv().unwrap()).len(), b.vocab);
        turn(&mut b);
        assert!(short.try_recv().is_ok());
        // The lead takes the tokens the rows leave (4 per call); alone, up to max_chunk. Only a
        // prompt's last piece reads back logits.
        let want = [
            Call::Mixed((4, 2, false), vec![(0, true), (1, true)]),
            Call::Mixed((4, 2, false), vec![(2, true), (3, true)]),
            Call::Prefill(4, 4, false),
            Call::Prefill(4, 2, true),
            Call::Prefill(5, 3, true),
        ];
        assert_eq!(*calls.lock().unwrap(), want);
    }

    #[test]
    fn short_prompts_ride_along_decode_steps() {
        let twin = Twin::new(8, 4, 8);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        b.ride_max = 16;
        let mut first = send(&tx, 0, &[5]);
        let mut logits_prompt = send(&tx, 1, &[7, 8, 9]);
        let mut greedy_prompt = send_job(&tx, 2, &[3, 4], true);
        let mut long = send(&tx, 3, &[1; 20]);
        turn(&mut b);
        assert!(first.try_recv().is_ok_and(|a| a.is_ok()));
        // Slot 0 keeps decoding, so the prompts keep riding.
        let mut next = send(&tx, 0, &[6]);
        turn(&mut b);
        assert!(next.try_recv().is_ok());
        let greedy_token = token_of(greedy_prompt.try_recv().expect("2 tokens: done after 2 steps"));
        assert!(logits_prompt.try_recv().is_err(), "one token left");
        let _next = send(&tx, 0, &[7]);
        turn(&mut b);
        let got = logits_of(logits_prompt.try_recv().expect("done after 3 steps"));
        // The long prompt (20 > ride_max) led the first step with the 5 tokens the rows left
        // (8 per call); with 15 left it rides too.
        let want = [
            Call::Mixed((3, 5, false), vec![(0, true), (1, false), (2, false)]),
            Call::Step(vec![(0, true), (1, false), (2, false), (3, false)]),
            Call::Step(vec![(0, true), (1, true), (3, false)]),
        ];
        assert_eq!(*calls.lock().unwrap(), want);
        assert!(long.try_recv().is_err(), "7 of 20 tokens done");
        // The same answers as prefilling each prompt alone on a fresh model.
        let mut alone = Twin::new(8, 4, 4);
        let tokens = |t: &[u32]| t.iter().map(|&t| TokenId(t)).collect::<Vec<_>>();
        let mut want_logits = vec![0.0; alone.vocab()];
        alone.prefill(SlotId(1), &tokens(&[7, 8, 9]), Some(&mut want_logits));
        let close = got.iter().zip(&want_logits).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()));
        assert!(close, "riding logits differ from a prefill's");
        assert_eq!(greedy_token, alone.prefill(SlotId(2), &tokens(&[3, 4]), None));
    }

    #[test]
    fn the_next_step_waits_for_the_streams_of_the_last_ones() {
        let twin = Twin::new(8, 8, 4);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        b.max_linger = Duration::from_secs(20); // what matters is who is waited for, not how long
        let _first: Vec<Answer> = (0..3).map(|s| send(&tx, s, &[1])).collect();
        turn(&mut b);
        b.last_step = Duration::from_secs(20);
        // Slot 0 answers at once, slot 1 late, slot 2's context is gone.
        let _fast = send(&tx, 0, &[2]);
        tx.send(Msg::Release(SlotId(2))).unwrap();
        let late = tx.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            send(&late, 1, &[2])
        });
        let start = Instant::now();
        turn(&mut b);
        let _slow = t.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "did not wait for the released slot");
        let steps: Vec<_> =
            calls.lock().unwrap().iter().filter(|c| matches!(c, Call::Step(_))).cloned().collect();
        assert_eq!(steps, [logits_step(&[0, 1, 2]), logits_step(&[0, 1])], "the late stream joined the step");
    }

    /// Prompts with nothing decoding share calls: the oldest leads, the others ride; each gets
    /// the answer it would get alone.
    #[test]
    fn prompts_without_decodes_share_calls() {
        let twin = Twin::new(8, 4, 4);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        let prompts = [[1, 2, 3], [4, 5, 6], [7, 8, 9]];
        let mut waiting: Vec<Answer> = (0..3).map(|s| send(&tx, s, &prompts[s as usize])).collect();
        for _ in 0..3 {
            turn(&mut b);
        }
        let want = [
            Call::Mixed((0, 2, false), vec![(1, false), (2, false)]),
            Call::Mixed((0, 1, true), vec![(1, false), (2, false)]),
            Call::Mixed((1, 1, true), vec![(2, true)]),
        ];
        assert_eq!(*calls.lock().unwrap(), want);
        let mut alone = Twin::new(8, 4, 4);
        for (s, r) in waiting.iter_mut().enumerate() {
            let got = logits_of(r.try_recv().expect("answered"));
            let tokens: Vec<_> = prompts[s].iter().map(|&t| TokenId(t)).collect();
            let mut want = vec![0.0; alone.vocab()];
            alone.prefill(SlotId(s as u32), &tokens, Some(&mut want));
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-4, "prompt {s}: max difference {diff}");
        }
    }

    #[test]
    fn a_failed_call_answers_runtime_error_and_the_next_works() {
        let mut twin = Twin::new(4, 4, 4);
        twin.fail_next = true;
        let (mut b, tx) = batcher(twin);
        let (mut r0, mut r1) = (send(&tx, 0, &[1]), send(&tx, 1, &[2]));
        turn(&mut b);
        for r in [&mut r0, &mut r1] {
            let e = r.try_recv().unwrap().unwrap_err();
            assert_eq!(e.code(), crate::nn::wit::ErrorCode::RuntimeError, "{e}");
            assert!(e.to_string().contains("device lost"), "{e}");
        }
        let mut r = send(&tx, 0, &[1]);
        turn(&mut b);
        assert!(r.try_recv().unwrap().is_ok());
    }

    #[test]
    fn a_release_drops_queued_work_resets_and_frees_the_slot() {
        let twin = Twin::new(4, 4, 4);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        drop(send(&tx, 2, &[1])); // the caller went away: not computed
        let _kept = send(&tx, 3, &[1; 9]); // queued when its context is dropped
        tx.send(Msg::Release(SlotId(3))).unwrap();
        turn(&mut b);
        assert_eq!(*calls.lock().unwrap(), [Call::Prefill(3, 4, false), Call::Reset(3)]);
        assert_eq!(*lock(&b.free.list), [SlotId(3)]);
        assert!(b.decodes.is_empty() && b.prefills.is_empty());
    }

    /// A compute for n greedy tokens feeds each back as a decode row by itself, without a round
    /// trip: the same tokens as n one-token computes, while other rows share the steps.
    #[test]
    fn a_greedy_run_feeds_its_tokens_back_without_round_trips() {
        let twin = Twin::new(4, 4, 8);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        let prompt = [5, 9, 2];
        let mut run = send_greedy(&tx, 0, &prompt, 4);
        let mut one = send_greedy(&tx, 1, &prompt, 1);
        turn(&mut b); // both prompts: slot 0 leads with all 3 tokens, slot 1 rides
        turn(&mut b);
        turn(&mut b);
        let mut singles = vec![token_of(one.try_recv().expect("the prompt's token"))];
        assert!(run.try_recv().is_err(), "still running ahead");
        for _ in 0..3 {
            let last = singles[singles.len() - 1].0;
            let mut r = send_greedy(&tx, 1, &[last], 1);
            turn(&mut b);
            singles.push(token_of(r.try_recv().expect("one step")));
        }
        assert_eq!(tokens_of(run.try_recv().expect("4 tokens")), singles);
        // Slot 0 was sent one compute; it decoded on in three steps by itself.
        let both = Call::Step(vec![(0, false), (1, false)]);
        let want = [
            Call::Mixed((0, 3, false), vec![(1, false)]),
            both.clone(),
            both.clone(),
            both,
            Call::Step(vec![(1, false)]),
            Call::Step(vec![(1, false)]),
        ];
        assert_eq!(*calls.lock().unwrap(), want);
    }

    /// Greedy and logits computes share steps: each gets its own kind of answer, and a greedy
    /// token is the argmax of the logits the same sequence gives.
    #[test]
    fn a_step_mixes_greedy_and_logits_rows() {
        let twin = Twin::new(4, 4, 8);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        // Slots 0 and 1 run one sequence, 0 for the token and 1 for the logits; so do 2 and 3.
        let prompt = [5, 9, 2, 7, 1, 3, 8, 4, 6, 2];
        let mut p0 = send_job(&tx, 0, &prompt, true);
        let mut p1 = send_job(&tx, 1, &prompt, false);
        for _ in 0..3 {
            turn(&mut b); // slot 0 leads (7 + 3 tokens), slot 1 rides, then leads alone
        }
        let want = argmax(&logits_of(p1.try_recv().unwrap()));
        assert_eq!(token_of(p0.try_recv().unwrap()), want);
        for tok in [4, 8, 6] {
            let answers = [(0, true), (1, false), (2, true), (3, false)]
                .map(|(slot, greedy)| send_job(&tx, slot, &[tok], greedy));
            turn(&mut b);
            let [t0, l1, t2, l3] = answers.map(|mut r| r.try_recv().unwrap());
            assert_eq!(token_of(t0), argmax(&logits_of(l1)), "token {tok}, slots 0 and 1");
            assert_eq!(token_of(t2), argmax(&logits_of(l3)), "token {tok}, slots 2 and 3");
        }
        let step = Call::Step(vec![(0, false), (1, true), (2, false), (3, true)]);
        let want = [
            Call::Mixed((0, 7, false), vec![(1, false)]),
            Call::Mixed((0, 3, false), vec![(1, false)]),
            Call::Prefill(1, 8, true),
            step.clone(),
            step.clone(),
            step,
        ];
        assert_eq!(*calls.lock().unwrap(), want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_contexts_equal_their_single_runs() {
        let backend = GpuBackend::start(
            "twin",
            Twin::new(8, 8, 16),
            Arc::new(NnStats::new()),
            Duration::from_millis(500),
        )
        .unwrap();
        let cpu = Arc::new(CpuModel::new(tiny()));
        let script = |i: u32| -> Vec<Vec<TokenId>> {
            let prompt = (0..40).map(|j| TokenId((i * 7 + j) % 50)).collect();
            std::iter::once(prompt).chain((0..6).map(|j| vec![TokenId(i + j)])).collect()
        };
        // Odd contexts ask for the greedy token, even ones for the logits: steps mix both.
        let greedy = |i: u32| i % 2 == 1;
        let run_gpu = |i: u32| {
            let b = backend.clone();
            tokio::spawn(async move {
                let mut ctx = b.new_context(b.slot_wait()).await.unwrap();
                let mut out = Vec::new();
                for chunk in script(i) {
                    out.push(ctx.compute(chunk, u32::from(greedy(i)), &[]).await);
                }
                out
            })
        };
        let tasks: Vec<_> = (0..8).map(run_gpu).collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let got = t.await.unwrap();
            let mut alone = CpuContext::new(cpu.clone());
            for (chunk, g) in script(i as u32).into_iter().zip(got) {
                let want = logits_of(alone.compute(chunk, 0, &[]).await);
                if greedy(i as u32) {
                    assert_eq!(token_of(g), argmax(&want), "context {i}");
                    continue;
                }
                let diff = want.iter().zip(logits_of(g)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(diff < 1e-4, "context {i}: max difference {diff}");
            }
        }
        settle(&backend.stats, 0).await;
    }

    /// Waits (up to a second) until `n` slots are in use: releases go through the batcher.
    async fn settle(stats: &NnStats, n: i64) {
        for _ in 0..500 {
            if stats.slots_in_use.load(Ordering::Relaxed) == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("{} slots in use, not {n}", stats.slots_in_use.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn no_free_slot_waits_then_is_too_large_and_a_release_wakes_a_waiter() {
        let stats = Arc::new(NnStats::new());
        let backend =
            GpuBackend::start("twin", Twin::new(2, 2, 4), stats.clone(), Duration::from_millis(500)).unwrap();
        let wait = Duration::from_millis(50);
        let a = backend.new_context(wait).await.unwrap();
        let _b = backend.new_context(wait).await.unwrap();
        let t = std::time::Instant::now();
        let e = backend.new_context(wait).await.map(|_| ()).unwrap_err();
        assert!(t.elapsed() >= wait, "gave up after {:?}", t.elapsed());
        assert_eq!(e.code(), crate::nn::wit::ErrorCode::TooLarge);
        assert!(e.to_string().contains("--nn-slots"), "{e}");
        assert_eq!(stats.slots_in_use.load(Ordering::Relaxed), 2);
        // A context waiting for a slot gets the one a release frees.
        let waiter = {
            let backend = backend.clone();
            tokio::spawn(async move { backend.new_context(Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        let mut c = waiter.await.unwrap().expect("the released slot");
        assert_eq!(logits_of(c.compute(vec![TokenId(1)], 0, &[]).await).len(), backend_vocab());
        assert_eq!(stats.slots_in_use.load(Ordering::Relaxed), 2);
        settle(&stats, 2).await;
    }

    #[tokio::test]
    async fn dropping_the_backend_waits_until_the_model_is_gone() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut twin = Twin::new(1, 1, 4);
        twin.dropped = Some(dropped.clone());
        let backend =
            GpuBackend::start("twin", twin, Arc::new(NnStats::new()), Duration::from_millis(500)).unwrap();
        let mut ctx = backend.new_context(Duration::from_millis(50)).await.unwrap();
        assert_eq!(logits_of(ctx.compute(vec![TokenId(1)], 0, &[]).await).len(), backend_vocab());
        drop(ctx);
        drop(backend);
        // The device must be gone before the process can exit (see `GpuBackend`'s Drop).
        assert!(dropped.load(Ordering::SeqCst), "the batcher still held the model");
    }

    fn backend_vocab() -> usize {
        tiny().config.vocab
    }

    /// One pass of the batcher thread's loop (`Batcher::run`), calls in flight and all.
    fn run_once(b: &mut Batcher<Twin>) {
        assert!(b.pass());
    }

    /// `n` greedy tokens from `token` on a fresh twin's slot 0, one call each, fed by the host.
    fn greedy_alone(token: u32, n: usize) -> Vec<TokenId> {
        let mut t = Twin::new(1, 1, 4);
        let mut last = TokenId(token);
        (0..n)
            .map(|_| {
                let mut id = [TokenId(0)];
                t.submit(None, &[StepRow { slot: SlotId(0), token: last.into(), logits: false }]).unwrap();
                t.finish(&mut id, &mut []).unwrap();
                last = id[0];
                last
            })
            .collect()
    }

    #[test]
    fn greedy_runs_go_on_in_a_call_submitted_before_the_last_is_read_back() {
        let twin = Twin::new(4, 4, 4);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        let mut runs = [send_greedy(&tx, 0, &[3], 4), send_greedy(&tx, 1, &[5], 4)];
        let mut logits = send(&tx, 2, &[7]);
        // Until the runs are answered (run_once blocks once nothing is left).
        for _ in 0..5 {
            run_once(&mut b);
        }
        assert!(b.flights.is_empty() && b.decodes.is_empty());
        assert_eq!(b.model.most_in_flight, 2, "the next call goes in before the last is read back");
        assert_eq!(tokens_of(runs[0].try_recv().unwrap()), greedy_alone(3, 4));
        assert_eq!(tokens_of(runs[1].try_recv().unwrap()), greedy_alone(5, 4));
        assert_eq!(logits_of(logits.try_recv().unwrap()).len(), b.vocab);
        // Four calls; the last three take both runs' tokens on the GPU.
        assert_eq!(b.model.fed_greedy, 6);
        let want =
            [Call::Step(vec![(0, false), (1, false), (2, true)]), Call::Step(vec![(0, false), (1, false)])];
        let got = calls.lock().unwrap().clone();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], want[0]);
        assert!(got[1..].iter().all(|c| *c == want[1]), "{got:?}");
    }

    /// Sends a greedy run of `run` tokens after `tokens`; its tokens arrive on the receiver.
    fn send_run(
        tx: &mpsc::Sender<Msg>,
        slot: u32,
        tokens: &[u32],
        run: u32,
    ) -> tokio::sync::mpsc::UnboundedReceiver<RunItem> {
        let (reply, rx) = tokio::sync::mpsc::unbounded_channel();
        send_with(tx, (slot, tokens), (run, &[]), Reply::Run(reply));
        rx
    }

    /// Sends a job for `tokens` on `slot` with `greedy` greedy tokens and stop tokens `stop`.
    fn send_with(
        tx: &mpsc::Sender<Msg>,
        (slot, tokens): (u32, &[u32]),
        (greedy, stop): (u32, &[TokenId]),
        reply: Reply,
    ) {
        let tokens = tokens.iter().map(|&t| TokenId(t)).collect();
        tx.send(Msg::Compute(Job::new(SlotId(slot), tokens, (greedy, stop), reply))).unwrap();
    }

    /// The tokens waiting on a run's receiver.
    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<RunItem>) -> Vec<TokenId> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(|t| t.unwrap()).collect()
    }

    /// A run hands over each token when its call is read back, while the next call (which
    /// feeds that token on the GPU) is already in; it ends after its last token, and a run
    /// whose context went away stops.
    #[test]
    fn a_greedy_run_hands_over_each_token_as_it_is_read_back() {
        let twin = Twin::new(4, 4, 4);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        let mut run = send_run(&tx, 0, &[3], 5);
        let mut dropped = send_run(&tx, 1, &[5], 100);
        run_once(&mut b); // the first call goes in
        assert!(drain(&mut run).is_empty());
        let mut got = Vec::new();
        for step in 1..5 {
            run_once(&mut b); // the next call goes in, then the one before is read back
            got.extend(drain(&mut run));
            assert_eq!(got, greedy_alone(3, step), "a token per call read back");
            if step == 2 {
                assert_eq!(drain(&mut dropped), greedy_alone(5, 2));
                drop(std::mem::replace(&mut dropped, tokio::sync::mpsc::unbounded_channel().1));
            }
        }
        run_once(&mut b); // the last call is read back
        got.extend(drain(&mut run));
        assert_eq!(got, greedy_alone(3, 5));
        assert!(run.try_recv() == Err(tokio::sync::mpsc::error::TryRecvError::Disconnected), "the run ended");
        assert!(b.flights.is_empty() && b.decodes.is_empty());
        // Slot 1's run stopped once its receiver was gone: it ran only in the three calls that
        // went in before the drop.
        let with_1 = calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| matches!(c, Call::Step(r) if r.iter().any(|&(s, _)| s == 1)))
            .count();
        assert_eq!(with_1, 3);
    }

    /// Greedy tokens end with a stop token, whole or in a run, though the call that feeds it
    /// went in before it was read back; no call takes them after that one.
    #[test]
    fn greedy_tokens_end_at_a_stop_token() {
        let alone = greedy_alone(3, 12);
        let at = 4;
        let stop = alone[at];
        let want = &alone[..=alone.iter().position(|&t| t == stop).unwrap()];
        let twin = Twin::new(4, 4, 4);
        let calls = twin.calls.clone();
        let (mut b, tx) = batcher(twin);
        let (reply, mut run) = tokio::sync::mpsc::unbounded_channel();
        send_with(&tx, (0, &[3]), (12, &[TokenId(9999), stop]), Reply::Run(reply));
        let (reply, mut once) = oneshot::channel();
        send_with(&tx, (1, &[3]), (12, &[stop]), Reply::once(reply, 12));
        for _ in 0..want.len() + 2 {
            run_once(&mut b);
        }
        assert!(b.flights.is_empty() && b.decodes.is_empty(), "nothing runs past the stop");
        assert_eq!(drain(&mut run), want);
        assert!(run.try_recv() == Err(tokio::sync::mpsc::error::TryRecvError::Disconnected), "the run ended");
        assert_eq!(tokens_of(once.try_recv().unwrap()), want);
        // One call per token, and the one that went in before the stop token was read back.
        assert_eq!(calls.lock().unwrap().len(), want.len() + 1);
    }

    #[test]
    fn a_failed_call_fails_the_call_queued_behind_it() {
        let mut twin = Twin::new(4, 4, 4);
        twin.fail_next = true;
        let (mut b, tx) = batcher(twin);
        let mut run = send_greedy(&tx, 0, &[3], 3);
        run_once(&mut b); // the first call, which fails
        let mut other = send(&tx, 1, &[4]); // joins the call that takes the run's next token
        run_once(&mut b); // that call goes in; the first is read back: an error
        run_once(&mut b); // the second is read back: failed with the first
        for a in [run.try_recv().unwrap(), other.try_recv().unwrap()] {
            assert!(matches!(a, Err(NnError::Backend(ref m)) if m.contains("test")), "{a:?}");
        }
        // The next work runs.
        let mut next = send(&tx, 2, &[5]);
        run_once(&mut b);
        run_once(&mut b);
        assert!(next.try_recv().is_ok_and(|a| a.is_ok()));
    }

    #[test]
    fn a_prompt_whose_last_piece_queued_behind_a_failed_call_gets_the_error() {
        let mut twin = Twin::new(4, 4, 4);
        twin.fail_next = true;
        let (mut b, tx) = batcher(twin);
        let mut prompt = send(&tx, 0, &[1, 2, 3, 4, 5, 6]);
        run_once(&mut b); // 4 tokens go in (the call fails)
        run_once(&mut b); // the last 2 go in behind it; the first is read back: an error
        assert!(prompt.try_recv().is_err(), "its last piece is still in flight");
        run_once(&mut b); // that piece ran on a state the failed call left unfinished
        let a = prompt.try_recv().unwrap();
        assert!(matches!(a, Err(NnError::Backend(ref m)) if m.contains("test")), "{a:?}");
    }
}
