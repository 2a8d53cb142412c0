//! Spreading client connections over the worker threads.
//!
//! Every worker accepts from the one listening socket. The first worker to wake drains the
//! whole accept queue in one go, so a burst of new connections (a load balancer or a client
//! pool opening its keep-alive connections) all landed on one worker and stayed there for
//! their lifetime: one core served them while the others idled. Now the worker that accepts a
//! connection keeps it unless another worker serves at least two fewer connections, and then
//! passes it to that worker. A connection opened while the previous one closes stays where
//! it was accepted: handing it over would cost a wake-up of another thread for nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The workers' connection counts and the inboxes through which they pass connections on.
#[derive(Debug)]
pub struct Balancer {
    /// Connections each worker serves, counted from the moment one is given to it.
    live: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<std::net::TcpStream>]>,
}

/// Where an accepted connection is served.
#[derive(Debug)]
pub enum Placement {
    /// By the worker that accepted it.
    Here(TcpStream),
    /// Passed on to another worker.
    Passed,
}

impl Balancer {
    /// A balancer for `workers` workers, with each worker's inbox.
    pub fn new(
        workers: usize,
    ) -> (
        Arc<Balancer>,
        Vec<mpsc::UnboundedReceiver<std::net::TcpStream>>,
    ) {
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balancer = Balancer {
            live: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: inboxes.into_boxed_slice(),
        };
        (Arc::new(balancer), receivers)
    }

    /// The worker that should serve a connection `worker` accepted: itself, unless another
    /// serves at least two fewer (then the one serving the fewest).
    fn choose(&self, worker: usize) -> usize {
        let mine = self
            .live
            .get(worker)
            .map_or(0, |n| n.load(Ordering::Relaxed));
        let fewest = self
            .live
            .iter()
            .enumerate()
            .map(|(index, live)| (live.load(Ordering::Relaxed), index))
            .min();
        match fewest {
            Some((count, index)) if count + 1 < mine => index,
            _ => worker,
        }
    }

    /// Decides where a connection accepted by `worker` is served, and counts it there.
    pub fn place(&self, worker: usize, tcp: TcpStream) -> Placement {
        let target = self.choose(worker);
        if target == worker {
            self.count_in(worker);
            return Placement::Here(tcp);
        }
        // The stream leaves this worker's reactor; the target registers it with its own.
        let stream = match tcp.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "a connection could not be passed on");
                return Placement::Passed;
            }
        };
        // Counted before it is sent: the target may serve it and end it at once.
        self.count_in(target);
        let Err(mpsc::error::SendError(stream)) = self.inboxes[target].send(stream) else {
            return Placement::Passed;
        };
        // That worker has stopped serving: serve it here after all.
        self.count_out(target);
        match TcpStream::from_std(stream) {
            Ok(tcp) => {
                self.count_in(worker);
                Placement::Here(tcp)
            }
            Err(error) => {
                tracing::debug!(%error, "a connection could not be served");
                Placement::Passed
            }
        }
    }

    fn count_in(&self, worker: usize) {
        if let Some(live) = self.live.get(worker) {
            live.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_out(&self, worker: usize) {
        if let Some(live) = self.live.get(worker) {
            live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts a connection of `worker` as served until the returned guard is dropped.
    pub fn served_by(self: &Arc<Self>, worker: usize) -> ServedConnection {
        ServedConnection {
            balancer: Arc::clone(self),
            worker,
        }
    }

    /// How many connections each worker serves now.
    #[cfg(test)]
    pub fn live(&self) -> Vec<usize> {
        self.live
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

/// Takes a connection off its worker's count when dropped (the connection has ended).
#[derive(Debug)]
pub struct ServedConnection {
    balancer: Arc<Balancer>,
    worker: usize,
}

impl Drop for ServedConnection {
    fn drop(&mut self) {
        self.balancer.count_out(self.worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected stream, as a worker gets one from `accept`.
    async fn accepted(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_burst_on_one_worker_is_evened_out_and_counts_end_with_the_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (balancer, mut inboxes) = Balancer::new(2);
        let mut clients = Vec::new();
        let mut guards = Vec::new();
        let mut placed = Vec::new();
        // Worker 0 accepts six connections in a row, as a worker draining a burst does.
        for _ in 0..6 {
            let (client, tcp) = accepted(&listener).await;
            clients.push(client);
            match balancer.place(0, tcp) {
                Placement::Here(_tcp) => {
                    placed.push(0);
                    guards.push(balancer.served_by(0));
                }
                Placement::Passed => placed.push(1),
            }
        }
        // Kept while the other serves at most one fewer, passed on otherwise.
        assert_eq!(placed, [0, 0, 1, 0, 1, 0]);
        assert_eq!(balancer.live(), [4, 2]);
        // The passed connections wait in worker 1's inbox, still open.
        for _ in 0..2 {
            let stream = inboxes[1].try_recv().expect("a connection passed on");
            let tcp = TcpStream::from_std(stream).unwrap();
            guards.push(balancer.served_by(1));
            drop(tcp);
        }
        assert!(inboxes[0].try_recv().is_err());
        drop(guards);
        assert_eq!(balancer.live(), [0, 0]);
    }

    #[tokio::test]
    async fn a_single_connection_at_a_time_stays_where_it_was_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (balancer, _inboxes) = Balancer::new(2);
        for worker in [1, 1, 0, 1] {
            let (_client, tcp) = accepted(&listener).await;
            let Placement::Here(_tcp) = balancer.place(worker, tcp) else {
                panic!("passed on with nothing to even out");
            };
            drop(balancer.served_by(worker));
        }
        assert_eq!(balancer.live(), [0, 0]);
    }

    #[tokio::test]
    async fn a_worker_that_stopped_serving_is_passed_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (balancer, mut inboxes) = Balancer::new(2);
        // Worker 1 has stopped: its inbox is gone.
        drop(inboxes.pop());
        let mut kept = Vec::new();
        for _ in 0..4 {
            let (client, tcp) = accepted(&listener).await;
            let Placement::Here(tcp) = balancer.place(0, tcp) else {
                panic!("passed to a worker that is gone");
            };
            kept.push((client, tcp, balancer.served_by(0)));
        }
        assert_eq!(balancer.live(), [4, 0]);
    }
}
