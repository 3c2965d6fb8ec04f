//! Which connections hold a consent of which Exact user, per ExactOAuthClient: kept from the
//! connection watch so that a reconcile finds its same-user peers in O(peers) instead of
//! scanning every watched connection (at 10,000 connections that scan, with a status clone
//! per connection, ran twice per refresh). No Kubernetes types: keys are plain strings.

use std::collections::{BTreeSet, HashMap};

/// A connection, by `(namespace, name)`.
pub type ConnectionId = (String, String);

/// The users' key: the client's `(namespace, name)` and the Exact UserID.
pub type UserKey = (String, String, String);

/// Connections by the Exact user of their consent (as their watched status shows it).
#[derive(Debug, Default)]
pub struct UserIndex {
    by_uid: HashMap<String, (UserKey, ConnectionId)>,
    by_user: HashMap<UserKey, BTreeSet<ConnectionId>>,
}

impl UserIndex {
    /// Records connection `uid` as `id`, consented by `user` (None: no user known).
    pub fn set(&mut self, uid: &str, id: ConnectionId, user: Option<UserKey>) {
        let current = self.by_uid.get(uid);
        if current.map(|(k, i)| (Some(k), i)) == Some((user.as_ref(), &id)) {
            return;
        }
        self.remove(uid);
        if let Some(user) = user {
            self.by_user
                .entry(user.clone())
                .or_default()
                .insert(id.clone());
            self.by_uid.insert(uid.to_string(), (user, id));
        }
    }

    /// Forgets connection `uid` (deleted, or its user is no longer known).
    pub fn remove(&mut self, uid: &str) {
        let Some((user, id)) = self.by_uid.remove(uid) else {
            return;
        };
        if let Some(ids) = self.by_user.get_mut(&user) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_user.remove(&user);
            }
        }
    }

    /// Forgets every connection whose uid is not in `seen` (after a re-list: a connection
    /// deleted while the watch was down sends no deletion).
    pub fn retain(&mut self, seen: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .by_uid
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.remove(&uid);
        }
    }

    /// The connections of `user` on client `(namespace, name)`, in a stable order.
    pub fn of(&self, client: &(String, String), user: &str) -> Vec<ConnectionId> {
        let key = (client.0.clone(), client.1.clone(), user.to_string());
        self.by_user
            .get(&key)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Connections indexed (with a known user).
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// Whether no connection is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ConnectionId {
        ("apps".into(), name.into())
    }

    fn user(u: &str) -> Option<UserKey> {
        Some(("ops".into(), "exact".into(), u.into()))
    }

    const CLIENT: (&str, &str) = ("ops", "exact");

    fn client() -> (String, String) {
        (CLIENT.0.into(), CLIENT.1.into())
    }

    #[test]
    fn connections_are_found_by_client_and_user() {
        let mut ix = UserIndex::default();
        ix.set("1", id("a"), user("u1"));
        ix.set("2", id("b"), user("u1"));
        ix.set("3", id("c"), user("u2"));
        ix.set("4", id("d"), None);
        ix.set(
            "5",
            id("e"),
            Some(("ops".into(), "other".into(), "u1".into())),
        );
        assert_eq!(ix.of(&client(), "u1"), vec![id("a"), id("b")]);
        assert_eq!(ix.of(&client(), "u2"), vec![id("c")]);
        assert_eq!(ix.of(&client(), "u3"), Vec::<ConnectionId>::new());
        assert_eq!(ix.len(), 4, "a connection without a user is not indexed");
    }

    #[test]
    fn a_changed_user_moves_and_a_deletion_forgets() {
        let mut ix = UserIndex::default();
        ix.set("1", id("a"), user("u1"));
        ix.set("1", id("a"), user("u2"));
        assert!(ix.of(&client(), "u1").is_empty(), "moved away from u1");
        assert_eq!(ix.of(&client(), "u2"), vec![id("a")]);
        ix.set("1", id("a"), None);
        assert!(ix.is_empty(), "user no longer known");
        ix.set("1", id("a"), user("u2"));
        ix.remove("1");
        assert!(ix.of(&client(), "u2").is_empty());
        assert!(ix.is_empty());
        ix.remove("1");
        assert!(ix.is_empty(), "removing twice is harmless");
        ix.set("1", id("a"), user("u1"));
        ix.set("2", id("b"), user("u1"));
        ix.retain(&["2".to_string()].into_iter().collect());
        assert_eq!(ix.of(&client(), "u1"), vec![id("b")], "a re-list without 1");
    }
}
