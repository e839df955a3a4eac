//! The cap on WatchSync calls per datastore: a watcher holds a slot for as
//! long as its response stream lives, so a watcher that leaves (the client
//! cancels or disconnects, or the stream ends) frees its slot.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;

use crate::error::Error;

/// Open watchers per datastore, at most `max` each.
#[derive(Debug)]
pub struct WatcherSlots {
    max: usize,
    /// Datastores with at least one watcher; an entry leaves at zero.
    open: Mutex<HashMap<String, usize>>,
}

impl WatcherSlots {
    /// At most `max` watchers per datastore.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new watcher of `datastore`, or RESOURCE_EXHAUSTED when it
    /// has `max` already.
    pub fn take(self: &Arc<Self>, datastore: &str) -> Result<WatcherSlot, Error> {
        let mut open = self.open.lock().expect("lock");
        let count = open.entry(datastore.to_string()).or_default();
        if *count >= self.max {
            return Err(Error::ResourceExhausted(format!(
                "datastore {datastore:?} already has {} watchers, the limit \
                 (max_watchers_per_datastore); end one before opening another",
                self.max
            )));
        }
        *count += 1;
        Ok(WatcherSlot {
            slots: self.clone(),
            datastore: datastore.to_string(),
        })
    }

    /// A slot for a new watch of many datastores, or RESOURCE_EXHAUSTED when
    /// `max` are open. Such watches are counted together, as if they watched
    /// one datastore of their own (no datastore is named ""), and take no
    /// slot of the datastores they follow: one watch of a thousand
    /// datastores is one watcher, as it is one call on its connection.
    pub fn take_many(self: &Arc<Self>) -> Result<WatcherSlot, Error> {
        let mut open = self.open.lock().expect("lock");
        let count = open.entry(String::new()).or_default();
        if *count >= self.max {
            return Err(Error::ResourceExhausted(format!(
                "there are already {} watches of many datastores, the limit \
                 (max_watchers_per_datastore, which counts them together); end one before opening \
                 another",
                self.max
            )));
        }
        *count += 1;
        Ok(WatcherSlot {
            slots: self.clone(),
            datastore: String::new(),
        })
    }
}

/// One watcher's place among its datastore's watchers; given back on drop.
#[derive(Debug)]
pub struct WatcherSlot {
    slots: Arc<WatcherSlots>,
    datastore: String,
}

impl WatcherSlot {
    /// `stream`, holding this slot until it is dropped.
    pub fn hold<S: Stream + Unpin>(self, stream: S) -> Held<S> {
        Held {
            stream,
            _slot: self,
        }
    }
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("lock");
        if let Some(count) = open.get_mut(&self.datastore) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.datastore);
            }
        }
    }
}

/// A stream that holds a watcher slot.
#[derive(Debug)]
pub struct Held<S> {
    stream: S,
    _slot: WatcherSlot,
}

impl<S: Stream + Unpin> Stream for Held<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_datastore_and_freed_on_drop() {
        let slots = WatcherSlots::new(2);
        let a1 = slots.take("a").unwrap();
        let _a2 = slots.take("a").unwrap();
        let err = slots.take("a").unwrap_err().to_string();
        assert!(
            err.contains("\"a\"")
                && err.contains('2')
                && err.contains("max_watchers_per_datastore"),
            "{err}"
        );
        let _b = slots.take("b").unwrap();
        drop(a1);
        let _a3 = slots.take("a").unwrap();
        assert!(slots.take("a").is_err());
    }

    #[test]
    fn an_unused_datastore_leaves_no_entry() {
        let slots = WatcherSlots::new(1);
        drop(slots.take("gone").unwrap());
        assert!(slots.open.lock().unwrap().is_empty());
    }
}
