use std::{
    collections::HashMap,
    marker::PhantomData,
    sync::{Arc, Mutex},
    vec,
};

use burn_communication::{Address, CommunicationChannel, Message, Protocol, ProtocolClient};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, RwLock};

use crate::{NodeId, global::shared::GlobalCollectiveError, node::base::NodeState};

type Channel<P> = <<P as Protocol>::Client as ProtocolClient>::Channel;

/// Handles the status of sync requests from other nodes
pub(crate) struct SyncService<P: Protocol> {
    /// Current node's state, shared with the thread that does aggregations
    node_state: Arc<RwLock<Option<NodeState>>>,
    /// The number of peers that have requested to sync with us since the last successful sync.
    syncing_peers: Mutex<Vec<NodeId>>,
    /// How many sync connections of each other node are open. A node that had some and has
    /// none left is lost: a sync waiting for it fails instead of waiting forever.
    connected_peers: Mutex<HashMap<NodeId, usize>>,
    /// Notification on each incoming sync request, and on each lost connection
    sync_notif: Notify,
    /// This node's connection to each other node, opened by the first sync and kept for the
    /// next ones: a connection per sync cost a handshake (and a port) on every sum.
    connections: tokio::sync::Mutex<HashMap<NodeId, (Address, Channel<P>)>>,

    _p: PhantomData<P>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SyncRequest(NodeId);

impl<P: Protocol> SyncService<P> {
    pub fn new(node_state: Arc<RwLock<Option<NodeState>>>) -> Self {
        Self {
            node_state,
            syncing_peers: Mutex::new(vec![]),
            connected_peers: Mutex::new(HashMap::new()),
            sync_notif: Notify::new(),
            connections: tokio::sync::Mutex::new(HashMap::new()),
            _p: PhantomData,
        }
    }

    fn add_syncing_peer(&self, peer: NodeId) {
        let mut syncing_peers = self.syncing_peers.lock().unwrap();
        syncing_peers.push(peer);
    }

    /// Sends this node's sync request `msg` to node `id` at `addr` on the kept connection, or
    /// on a new one when there is none yet or the kept one broke.
    async fn request(
        connections: &mut HashMap<NodeId, (Address, Channel<P>)>,
        id: NodeId,
        addr: &Address,
        msg: &bytes::Bytes,
    ) -> Result<(), GlobalCollectiveError> {
        if let Some((kept_addr, connection)) = connections.get_mut(&id)
            && kept_addr == addr
            && connection.send(Message::new(msg.clone())).await.is_ok()
        {
            return Ok(());
        }
        connections.remove(&id);
        let mut connection = P::Client::connect(addr.clone(), "sync")
            .await
            .ok_or(GlobalCollectiveError::PeerLost(id))?;
        connection
            .send(Message::new(msg.clone()))
            .await
            .map_err(|_| GlobalCollectiveError::PeerLost(id))?;
        connections.insert(id, (addr.clone(), connection));
        Ok(())
    }

    /// Sync with all peers; a peer that cannot be reached fails the sync.
    pub async fn sync(&self) -> Result<(), GlobalCollectiveError> {
        // we can't sync while we register
        let node_state = self.node_state.read().await;
        let node_state = node_state
            .as_ref()
            .expect("Trying to sync a node before having registered to the orchestrator");

        // this peer is syncing
        self.add_syncing_peer(node_state.node_id);
        let msg: bytes::Bytes = rmp_serde::to_vec(&SyncRequest(node_state.node_id))
            .unwrap()
            .into();
        {
            let mut connections = self.connections.lock().await;
            for (id, addr) in &node_state.nodes {
                if *id != node_state.node_id {
                    Self::request(&mut connections, *id, addr, &msg).await?;
                }
            }
        }
        let mut all_node_ids = node_state.nodes.keys().cloned().collect::<Vec<_>>();
        all_node_ids.sort();
        loop {
            // Listen before looking: a request that comes in between is not missed.
            let notified = self.sync_notif.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                // compare currently synced peers with list of all nodes
                let mut syncing_peers = self.syncing_peers.lock().unwrap();
                let mut synced = syncing_peers.clone();
                synced.sort();

                if synced == all_node_ids {
                    // All nodes have synced: the next sync starts from an empty list (no node
                    // can request it before this one has returned from this sync).
                    syncing_peers.clear();
                    return Ok(());
                }
                let connected = self.connected_peers.lock().unwrap();
                if let Some((lost, _)) = connected
                    .iter()
                    .find(|(id, open)| **open == 0 && !synced.contains(id))
                {
                    return Err(GlobalCollectiveError::PeerLost(*lost));
                }
            }
            // Wait for the next sync to come in
            notified.await
        }
    }

    /// Serves one other node's sync connection: each message on it is one sync request of
    /// that node, until the connection ends.
    pub async fn handle_sync_connection<C: CommunicationChannel>(&self, mut channel: C) {
        let mut from = None;
        loop {
            // A machine that stops mid-request ends its own connection, not this process; a
            // sync waiting for it fails.
            let msg = match channel.recv().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(err) => {
                    log::warn!("A sync connection broke: {err:?}");
                    break;
                }
            };
            let msg = match rmp_serde::from_slice::<SyncRequest>(&msg.data) {
                Ok(msg) => msg,
                Err(err) => {
                    log::warn!("Unreadable sync request: {err}");
                    break;
                }
            };
            if from.is_none() {
                *self
                    .connected_peers
                    .lock()
                    .unwrap()
                    .entry(msg.0)
                    .or_insert(0) += 1;
                from = Some(msg.0);
            }
            self.add_syncing_peer(msg.0);
            self.sync_notif.notify_waiters();
        }
        if let Some(id) = from {
            if let Some(open) = self.connected_peers.lock().unwrap().get_mut(&id) {
                *open -= 1;
            }
            self.sync_notif.notify_waiters();
        }
    }
}
