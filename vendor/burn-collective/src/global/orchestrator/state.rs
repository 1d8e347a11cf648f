use crate::{
    PeerId,
    global::{
        NodeId,
        shared::{
            CollectiveMessageResponse, GlobalCollectiveError, RemoteRequest, RemoteResponse,
            RequestId, SessionId,
        },
    },
};
use burn_communication::Address;
use std::collections::HashMap;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

pub(crate) struct Session {
    // Unbounded: answers are sent under the state's lock, which must never wait on a node.
    response_sender: UnboundedSender<CollectiveMessageResponse>,
    response_receiver: Option<UnboundedReceiver<CollectiveMessageResponse>>,
}

impl Session {
    fn new() -> Self {
        let (response_sender, recv) =
            tokio::sync::mpsc::unbounded_channel::<CollectiveMessageResponse>();
        Self {
            response_sender,
            response_receiver: Some(recv),
        }
    }

    async fn respond(&mut self, response: CollectiveMessageResponse) {
        // A node whose connection broke has no one to read its answers.
        if self.response_sender.send(response).is_err() {
            log::warn!("A response to a node that is gone was dropped");
        }
    }
}

pub(crate) struct GlobalCollectiveState {
    /// The ids passed to each register so far, and their addresses
    registered_nodes: HashMap<SessionId, NodeId>,
    /// Address for each node
    node_addresses: HashMap<NodeId, Address>,
    /// Peer on each node
    node_peers: HashMap<NodeId, Vec<PeerId>>,

    /// How many total nodes for the current register operation, as defined by the first caller
    cur_num_nodes: Option<u32>,

    register_requests: Vec<(SessionId, RequestId, NodeId)>,

    /// Every node of the current launch has registered, and some have not left yet.
    launched: bool,
    /// Register requests of the next launch, answered once the current one has ended.
    waiting: Vec<WaitingRegister>,

    sessions: HashMap<SessionId, Session>,
}

/// A register request held until the launch before it has ended.
struct WaitingRegister {
    session_id: SessionId,
    request_id: RequestId,
    node_addr: Address,
    num_nodes: u32,
    peers: Vec<PeerId>,
}

impl GlobalCollectiveState {
    pub fn new() -> Self {
        Self {
            registered_nodes: HashMap::new(),
            node_addresses: HashMap::new(),
            node_peers: HashMap::new(),
            cur_num_nodes: None,
            register_requests: Vec::new(),
            launched: false,
            waiting: Vec::new(),
            sessions: HashMap::new(),
        }
    }

    pub(crate) fn init_session(&mut self, id: SessionId) {
        if self.sessions.contains_key(&id) {
            return;
        }
        self.sessions.insert(id, Session::new());
    }

    /// Create the session with given id if necessary, and get the response receiver; `None`
    /// if another connection took it already.
    pub(crate) fn get_session_responder(
        &mut self,
        id: SessionId,
    ) -> Option<UnboundedReceiver<CollectiveMessageResponse>> {
        self.init_session(id);
        self.sessions.get_mut(&id)?.response_receiver.take()
    }

    pub(crate) async fn respond(
        &mut self,
        session_id: SessionId,
        response: CollectiveMessageResponse,
    ) {
        match self.sessions.get_mut(&session_id) {
            Some(session) => session.respond(response).await,
            None => log::warn!("A response to a node that is gone was dropped"),
        }
    }

    /// Forgets the node of a connection that ended, whether it finished, stopped or crashed:
    /// its session, its registration and any register request of it still waiting. Once no
    /// node is registered, the next launch may have any number of nodes; so the orchestrator
    /// serves launch after launch, a failed one included.
    pub(crate) async fn disconnect(&mut self, session_id: SessionId) {
        self.sessions.remove(&session_id);
        self.waiting.retain(|w| w.session_id != session_id);
        self.register_requests
            .retain(|(session, _, _)| *session != session_id);
        if let Some(node_id) = self.registered_nodes.remove(&session_id) {
            log::info!("Node {node_id:?} left before finishing");
            self.node_addresses.remove(&node_id);
            self.node_peers.remove(&node_id);
        }
        self.next_launch_when_empty().await;
    }

    /// With no node registered, the launch is over: the next one starts afresh, with the
    /// register requests that came while this one ran.
    async fn next_launch_when_empty(&mut self) {
        if !self.registered_nodes.is_empty() {
            return;
        }
        self.cur_num_nodes = None;
        self.launched = false;
        for w in core::mem::take(&mut self.waiting) {
            if let Err(err) = self
                .register(
                    w.session_id,
                    w.request_id,
                    w.node_addr,
                    w.num_nodes,
                    w.peers,
                )
                .await
            {
                self.respond_error(w.session_id, w.request_id, err).await;
            }
        }
    }

    /// Process an incoming node's request
    pub(crate) async fn process_request(
        &mut self,
        session_id: SessionId,
        request_id: RequestId,
        request: RemoteRequest,
    ) {
        if let Err(err) = match request {
            RemoteRequest::Register {
                node_addr,
                num_nodes,
                peers,
            } => {
                self.register(session_id, request_id, node_addr, num_nodes, peers)
                    .await
            }
            RemoteRequest::Finish => self.finish(session_id, request_id).await,
        } {
            self.respond_error(session_id, request_id, err).await;
        }
    }

    /// Answers request `request_id` of `session_id` with `err`.
    async fn respond_error(
        &mut self,
        session_id: SessionId,
        request_id: RequestId,
        err: GlobalCollectiveError,
    ) {
        let content = RemoteResponse::Error(err);
        let response = CollectiveMessageResponse {
            request_id,
            content,
        };
        self.respond(session_id, response).await;
    }

    /// Un-register a node. Any pending requests will be cancelled, returning error responses.
    async fn finish(
        &mut self,
        session_id: SessionId,
        request_id: RequestId,
    ) -> Result<(), GlobalCollectiveError> {
        let node_id = self
            .registered_nodes
            .remove(&session_id)
            .ok_or(GlobalCollectiveError::NotRegisteredOnFinish)?;
        self.node_addresses.remove(&node_id);
        self.node_peers.remove(&node_id);

        let mut register_requests = vec![];
        core::mem::swap(&mut register_requests, &mut self.register_requests);
        for (session, req, node_id) in register_requests {
            if session == session_id {
                // Send a response if we are finishing a session with a pending register request
                self.respond_error(
                    session_id,
                    req,
                    GlobalCollectiveError::PendingRegisterOnFinish,
                )
                .await;
            } else {
                // keep the register request
                self.register_requests.push((session, req, node_id));
            }
        }

        self.respond(
            session_id,
            CollectiveMessageResponse {
                request_id,
                content: RemoteResponse::FinishAck,
            },
        )
        .await;

        self.next_launch_when_empty().await;

        Ok(())
    }

    /// Numbers the registered nodes by their smallest peer id instead of by the order they
    /// registered in. The ring all-reduce orders its nodes by id, so the order of every global
    /// sum (and so its last bits) is then the same on every launch.
    fn number_nodes_by_first_peer(&mut self) {
        let mut order: Vec<NodeId> = self.node_peers.keys().copied().collect();
        order.sort_by_key(|id| (self.node_peers[id].iter().map(|p| p.0).min(), *id));
        let renumbered: HashMap<NodeId, NodeId> = order
            .into_iter()
            .enumerate()
            .map(|(position, old)| (old, NodeId::from(position)))
            .collect();
        for id in self.registered_nodes.values_mut() {
            *id = renumbered[id];
        }
        self.node_addresses = core::mem::take(&mut self.node_addresses)
            .into_iter()
            .map(|(id, address)| (renumbered[&id], address))
            .collect();
        self.node_peers = core::mem::take(&mut self.node_peers)
            .into_iter()
            .map(|(id, peers)| (renumbered[&id], peers))
            .collect();
    }

    async fn register(
        &mut self,
        session_id: SessionId,
        request_id: RequestId,
        node_addr: Address,
        num_nodes: u32,
        peers: Vec<PeerId>,
    ) -> Result<(), GlobalCollectiveError> {
        if self.launched {
            // A node of the next launch (a resume, the next run) while machines of this one
            // are still finishing: it waits for them to leave.
            self.waiting.push(WaitingRegister {
                session_id,
                request_id,
                node_addr,
                num_nodes,
                peers,
            });
            return Ok(());
        }
        match &self.cur_num_nodes {
            Some(cur_num_nodes) => {
                if *cur_num_nodes != num_nodes {
                    return Err(GlobalCollectiveError::RegisterParamsMismatch);
                }
            }
            None => {
                self.cur_num_nodes = Some(num_nodes);
            }
        }

        if self.registered_nodes.contains_key(&session_id)
            || self.node_addresses.values().any(|addr| node_addr == *addr)
        {
            return Err(GlobalCollectiveError::DoubleRegister);
        }
        // The first free number: nodes that left before the launch completed free theirs.
        let node_id: NodeId = (0u32..)
            .map(NodeId::from)
            .find(|id| !self.node_peers.contains_key(id))
            .expect("fewer than 2^32 nodes");
        self.registered_nodes.insert(session_id, node_id);
        self.node_addresses.insert(node_id, node_addr);
        self.node_peers.insert(node_id, peers);

        self.register_requests
            .push((session_id, request_id, node_id));

        if self.registered_nodes.len() == num_nodes as usize {
            self.launched = true;
            let num_global_devices = self.node_peers.values().map(|p| p.len() as u32).sum();
            self.number_nodes_by_first_peer();
            let mut callbacks = vec![];
            core::mem::swap(&mut callbacks, &mut self.register_requests);

            for (session, request, _) in callbacks {
                let node_id = self.registered_nodes[&session];
                let content = RemoteResponse::Register {
                    node_id,
                    nodes: self.node_addresses.clone(),
                    num_global_devices,
                };
                let resp = CollectiveMessageResponse {
                    request_id: request,
                    content,
                };
                self.respond(session, resp).await;
            }
        }

        Ok(())
    }
}
