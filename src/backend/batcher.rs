//! One batcher for a backend's reads: questions that arrive close together
//! go out together.
//!
//! A question (a set of items, each an id to look up) joins the open window.
//! The window closes when no question has come for `idle`, when it has been
//! open for `max_wait`, or at once when it holds `max_items`; its distinct
//! items then go to the backend's read as one round, and each asker gets the
//! answers to its own items. A question that fills a window by itself (a
//! sweep of thousands of ids) goes out at once in a round of its own, so that
//! no small question waits for a long round to end; a reconcile's look waits
//! at most `max_wait` for company. Rounds run side by side: the backend's own
//! rate limits and in-flight bound pace the calls, not the batcher.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// When a window closes.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Close after this long without a new question.
    pub idle: Duration,
    /// Close after this long open, however busy.
    pub max_wait: Duration,
    /// Close at once when this many distinct items are waiting.
    pub max_items: usize,
}

/// One round of the backend's read: the distinct items of a window, and the
/// latest deadline among their askers, by which it returns what it has.
/// Items without an answer are left out.
pub type Read<Q, A, S> =
    Arc<dyn Fn(Vec<Q>, Instant) -> BoxFuture<'static, (HashMap<Q, A>, S)> + Send + Sync>;

struct Question<Q, A, S> {
    items: Vec<Q>,
    deadline: Instant,
    reply: oneshot::Sender<(HashMap<Q, A>, S)>,
}

/// The batcher of one backend's reads. `Q` is an item to look up, `A` its
/// answer and `S` what a round reports about itself (call counts).
pub struct Batcher<Q, A, S> {
    questions: mpsc::UnboundedSender<Question<Q, A, S>>,
    /// The window's task starts with the first question, so that a batcher
    /// can be built outside a runtime.
    idle: Mutex<Option<mpsc::UnboundedReceiver<Question<Q, A, S>>>>,
    read: Read<Q, A, S>,
    window: Window,
}

impl<Q, A, S> Batcher<Q, A, S>
where
    Q: Clone + Eq + Hash + Send + Sync + 'static,
    A: Clone + Send + 'static,
    S: Clone + Default + Send + 'static,
{
    pub fn new(window: Window, read: Read<Q, A, S>) -> Self {
        let (questions, receiver) = mpsc::unbounded_channel();
        Batcher {
            questions,
            idle: Mutex::new(Some(receiver)),
            read,
            window,
        }
    }

    /// Asks about `items`, waiting no longer than `deadline`. What has no
    /// answer by then (or no clean one) is missing from the map: the caller
    /// reads that as Unknown.
    pub async fn ask(&self, items: Vec<Q>, deadline: Instant) -> (HashMap<Q, A>, S) {
        if items.is_empty() {
            return (HashMap::new(), S::default());
        }
        if let Some(receiver) = self.idle.lock().expect("batcher lock").take() {
            tokio::spawn(collect(receiver, self.window, self.read.clone()));
        }
        let (reply, answer) = oneshot::channel();
        let question = Question {
            items,
            deadline,
            reply,
        };
        if self.questions.send(question).is_err() {
            return (HashMap::new(), S::default());
        }
        // The read returns what it has by the round's deadline; the grace
        // lets those answers reach an asker whose deadline that was.
        match tokio::time::timeout_at(deadline + REPLY_GRACE, answer).await {
            Ok(Ok(answered)) => answered,
            _ => (HashMap::new(), S::default()),
        }
    }
}

/// How long after its deadline an asker still waits for the round's reply.
const REPLY_GRACE: Duration = Duration::from_millis(250);

/// Gathers questions into windows and sends each window's round off.
async fn collect<Q, A, S>(
    mut questions: mpsc::UnboundedReceiver<Question<Q, A, S>>,
    window: Window,
    read: Read<Q, A, S>,
) where
    Q: Clone + Eq + Hash + Send + Sync + 'static,
    A: Clone + Send + 'static,
    S: Clone + Send + 'static,
{
    let max_items = window.max_items.max(1);
    while let Some(first) = questions.recv().await {
        // A question that fills a window by itself skips the loop below.
        let mut round = Round::of(first);
        let opened = Instant::now();
        let mut last = opened;
        while round.items.len() < max_items {
            let close = (last + window.idle).min(opened + window.max_wait);
            match tokio::time::timeout_at(close, questions.recv()).await {
                Ok(Some(question)) if question.items.len() >= max_items => {
                    tokio::spawn(Round::of(question).send(read.clone()));
                }
                Ok(Some(question)) => {
                    round.join(question);
                    last = Instant::now();
                }
                // Closed, or the window is over: send what is here.
                Ok(None) | Err(_) => break,
            }
        }
        tokio::spawn(round.send(read.clone()));
    }
}

/// The questions of one window.
struct Round<Q, A, S> {
    /// The distinct items of every question, in the order first asked.
    items: Vec<Q>,
    /// The same items, to tell a new one; built only once a second question
    /// joins, so that a lone question (a sweep of thousands of ids) is never
    /// copied.
    seen: Option<HashSet<Q>>,
    /// The latest of the askers' deadlines.
    deadline: Instant,
    askers: Vec<Asker<Q, A, S>>,
}

struct Asker<Q, A, S> {
    /// What it asked about; `None` for the first asker while it is alone,
    /// whose items are the round's own.
    items: Option<Vec<Q>>,
    reply: oneshot::Sender<(HashMap<Q, A>, S)>,
}

impl<Q, A, S> Round<Q, A, S>
where
    Q: Clone + Eq + Hash,
    A: Clone,
    S: Clone,
{
    /// A round opened by its first question, whose items it takes over.
    fn of(question: Question<Q, A, S>) -> Self {
        let Question {
            mut items,
            deadline,
            reply,
        } = question;
        distinct(&mut items);
        Round {
            items,
            seen: None,
            deadline,
            askers: vec![Asker { items: None, reply }],
        }
    }

    fn join(&mut self, question: Question<Q, A, S>) {
        let items = &self.items;
        let seen = self
            .seen
            .get_or_insert_with(|| items.iter().cloned().collect());
        if let Some(first) = self.askers.first_mut()
            && first.items.is_none()
        {
            first.items = Some(self.items.clone());
        }
        for item in &question.items {
            if seen.insert(item.clone()) {
                self.items.push(item.clone());
            }
        }
        self.deadline = self.deadline.max(question.deadline);
        self.askers.push(Asker {
            items: Some(question.items),
            reply: question.reply,
        });
    }

    /// Reads the window's items once, and hands each asker its answers.
    async fn send(self, read: Read<Q, A, S>) {
        let Round {
            items,
            deadline,
            mut askers,
            ..
        } = self;
        // Once every asker has given up (a cancelled sweep), no one is left
        // to read the answers: stop calling.
        let all_gone = futures::future::join_all(askers.iter_mut().map(|a| a.reply.closed()));
        let (answers, report) = tokio::select! {
            done = read(items, deadline) => done,
            _ = all_gone => return,
        };
        for asker in askers {
            let mine = match asker.items {
                // Alone in its round: every answer is its own, as it is.
                None => {
                    let _ = asker.reply.send((answers, report));
                    return;
                }
                Some(items) => items
                    .iter()
                    .filter_map(|q| Some((q.clone(), answers.get(q)?.clone())))
                    .collect(),
            };
            let _ = asker.reply.send((mine, report.clone()));
        }
    }
}

/// Drops repeated items, keeping the first of each, without copying any.
fn distinct<Q: Eq + Hash>(items: &mut Vec<Q>) {
    let mut first = Vec::with_capacity(items.len());
    {
        let mut seen = HashSet::with_capacity(items.len());
        first.extend(items.iter().map(|q| seen.insert(q)));
    }
    let mut first = first.into_iter();
    items.retain(|_| first.next().unwrap_or(false));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;

    use super::*;

    /// A read that answers each item with its double, and records each round.
    fn doubling(rounds: Arc<Mutex<Vec<Vec<u32>>>>) -> Read<u32, u32, usize> {
        Arc::new(move |items: Vec<u32>, _deadline| {
            rounds.lock().unwrap().push(items.clone());
            let calls = rounds.lock().unwrap().len();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                (items.iter().map(|i| (*i, i * 2)).collect(), calls)
            }
            .boxed()
        })
    }

    fn window() -> Window {
        Window {
            idle: Duration::from_millis(50),
            max_wait: Duration::from_millis(500),
            max_items: 100,
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test(start_paused = true)]
    async fn questions_close_together_go_out_as_one_read() {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::new(window(), doubling(rounds.clone())));
        let asks = (1..=5u32).map(|i| {
            let batcher = batcher.clone();
            async move { batcher.ask(vec![i, 100], far()).await }
        });
        let answers = futures::future::join_all(asks).await;
        assert_eq!(
            rounds.lock().unwrap().len(),
            1,
            "{:?}",
            rounds.lock().unwrap()
        );
        // Each item is asked once, however many ask about it.
        assert_eq!(rounds.lock().unwrap()[0].len(), 6);
        for (i, (mine, _)) in (1..=5u32).zip(answers) {
            assert_eq!(mine.len(), 2);
            assert_eq!(mine[&i], i * 2);
            assert_eq!(mine[&100], 200);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_question_asks_each_item_once_and_gets_every_answer() {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::new(window(), doubling(rounds.clone()));
        let (mine, _) = batcher.ask(vec![3, 1, 3, 2, 1], far()).await;
        assert_eq!(rounds.lock().unwrap().clone(), vec![vec![3, 1, 2]]);
        assert_eq!(mine, HashMap::from([(1, 2), (2, 4), (3, 6)]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_asker_gets_only_its_own_answers_once_others_join() {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::new(window(), doubling(rounds.clone())));
        let first = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.ask(vec![1, 2], far()).await })
        };
        tokio::task::yield_now().await;
        let (second, _) = batcher.ask(vec![2, 3], far()).await;
        let (first, _) = first.await.unwrap();
        assert_eq!(rounds.lock().unwrap().clone(), vec![vec![1, 2, 3]]);
        assert_eq!(first, HashMap::from([(1, 2), (2, 4)]));
        assert_eq!(second, HashMap::from([(2, 4), (3, 6)]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_goes_out_at_once() {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::new(window(), doubling(rounds.clone()));
        let started = Instant::now();
        let (mine, _) = batcher.ask((0..250).collect(), far()).await;
        assert_eq!(mine.len(), 250);
        // No idle wait: only the read's own 10 ms.
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_waits_no_longer_than_max_wait() {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::new(window(), doubling(rounds.clone())));
        let trickle = {
            let batcher = batcher.clone();
            async move {
                let mut asks = Vec::new();
                for i in 0..30u32 {
                    let batcher = batcher.clone();
                    asks.push(tokio::spawn(
                        async move { batcher.ask(vec![i], far()).await },
                    ));
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                for ask in asks {
                    assert_eq!(ask.await.unwrap().0.len(), 1);
                }
            }
        };
        trickle.await;
        let rounds = rounds.lock().unwrap();
        // 30 questions 40 ms apart over 1.2 s: the 500 ms cap closes windows.
        assert!((3..=4).contains(&rounds.len()), "{rounds:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_asker_past_its_deadline_gets_no_answer() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let slow: Read<u32, u32, ()> = Arc::new(move |items: Vec<u32>, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                (items.iter().map(|i| (*i, *i)).collect(), ())
            }
            .boxed()
        });
        let batcher = Batcher::new(window(), slow);
        let (mine, ()) = batcher
            .ask(vec![1], Instant::now() + Duration::from_secs(1))
            .await;
        assert!(mine.is_empty());
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_read_has_at_its_deadline_reaches_the_asker() {
        // A read that answers half, then runs out of time, as a sweep does.
        let partial: Read<u32, u32, ()> = Arc::new(|items: Vec<u32>, deadline| {
            async move {
                tokio::time::sleep_until(deadline).await;
                (
                    items.iter().filter(|i| **i < 5).map(|i| (*i, *i)).collect(),
                    (),
                )
            }
            .boxed()
        });
        let batcher = Batcher::new(window(), partial);
        let (mine, ()) = batcher
            .ask((0..10).collect(), Instant::now() + Duration::from_secs(2))
            .await;
        assert_eq!(mine.len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_question_that_fills_a_window_goes_out_alone() {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::new(window(), doubling(rounds.clone())));
        let small = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.ask(vec![1000], far()).await })
        };
        tokio::task::yield_now().await;
        let (big, _) = batcher.ask((0..150).collect(), far()).await;
        assert_eq!(big.len(), 150);
        assert_eq!(small.await.unwrap().0.len(), 1);
        let rounds = rounds.lock().unwrap();
        assert_eq!(rounds.len(), 2, "{rounds:?}");
        assert!(rounds.iter().any(|r| r == &vec![1000]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_whose_askers_all_gave_up_stops_reading() {
        let finished = Arc::new(AtomicUsize::new(0));
        let done = finished.clone();
        let slow: Read<u32, u32, ()> = Arc::new(move |items: Vec<u32>, _| {
            let done = done.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                done.fetch_add(1, Ordering::SeqCst);
                (items.iter().map(|i| (*i, *i)).collect(), ())
            }
            .boxed()
        });
        let batcher = Batcher::new(window(), slow);
        let cancelled = tokio::time::timeout(Duration::from_secs(1), batcher.ask(vec![1], far()));
        assert!(cancelled.await.is_err());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0, "the read went on");
    }

    #[tokio::test(start_paused = true)]
    async fn items_without_an_answer_are_left_out() {
        let partial: Read<u32, u32, ()> = Arc::new(|items: Vec<u32>, _| {
            async move {
                (
                    items
                        .iter()
                        .filter(|i| *i % 2 == 0)
                        .map(|i| (*i, *i))
                        .collect(),
                    (),
                )
            }
            .boxed()
        });
        let batcher = Batcher::new(window(), partial);
        let (mine, ()) = batcher.ask(vec![1, 2, 3, 4], far()).await;
        let mut keys: Vec<u32> = mine.into_keys().collect();
        keys.sort();
        assert_eq!(keys, vec![2, 4]);
    }
}
