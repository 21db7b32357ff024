//! The `Transparency` service: checkpoints, proofs and the entry export, from a store it can only
//! read (`LogReader`: no sequencing method is within its reach).

use std::sync::Arc;

use e2ee_ca_proto::v1::transparency_server::Transparency;
use e2ee_ca_proto::v1::{
    ExportEntriesRequest, ExportEntriesResponse, GetCheckpointRequest, GetCheckpointResponse,
    GetConsistencyProofRequest, GetConsistencyProofResponse, GetInclusionProofRequest, GetInclusionProofResponse,
};
use tonic::{Request, Response, Status};

use super::principal::principal;
use super::status::{inconsistent_log, proof_status, store_status};
use crate::transparency::{LogReader, StoredCheckpoint};

/// Entries per `ExportEntries` message (and per store read).
const EXPORT_CHUNK: u64 = 256;

/// The `Transparency` service: checkpoints and proofs from the log store.
pub struct TransparencyService<L> {
    store: Arc<L>,
}

impl<L> TransparencyService<L> {
    /// Serves the log in `store`.
    pub fn new(store: Arc<L>) -> TransparencyService<L> {
        TransparencyService { store }
    }
}

impl<L: LogReader> TransparencyService<L> {
    /// The latest checkpoint; proofs are only served up to its size (never against an unsigned tree).
    async fn signed(&self) -> Result<StoredCheckpoint, Status> {
        self.store
            .latest_checkpoint()
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::unavailable("the audit log has no signed checkpoint yet; retry shortly"))
    }
}

/// Checks `size <= signed`, naming the field.
fn within_signed(field: &str, size: u64, signed: u64) -> Result<(), Status> {
    if size > signed {
        return Err(Status::invalid_argument(format!(
            "{field} {size} is beyond the latest signed checkpoint (size {signed}); fetch GetCheckpoint first"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl<L: LogReader> Transparency for TransparencyService<L> {
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<GetCheckpointResponse>, Status> {
        principal(&request)?;
        let checkpoint = self.signed().await?;
        Ok(Response::new(GetCheckpointResponse {
            checkpoint: checkpoint.note,
            tree_size: checkpoint.size,
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<GetInclusionProofResponse>, Status> {
        principal(&request)?;
        let request = request.into_inner();
        let signed = self.signed().await?;
        within_signed("tree_size", request.tree_size, signed.size)?;
        if request.leaf_index >= request.tree_size {
            return Err(Status::invalid_argument(format!(
                "leaf_index {} is not below tree_size {}",
                request.leaf_index, request.tree_size
            )));
        }
        let hashes = crate::transparency::inclusion_proof(self.store.as_ref(), request.leaf_index, request.tree_size)
            .await
            .map_err(proof_status)?;
        let entry = self
            .store
            .entries(request.leaf_index, request.leaf_index + 1)
            .await
            .map_err(store_status)?
            .pop()
            .ok_or_else(inconsistent_log)?;
        Ok(Response::new(GetInclusionProofResponse {
            leaf_index: request.leaf_index,
            tree_size: request.tree_size,
            hashes: hashes.iter().map(|hash| hash.to_vec()).collect(),
            entry,
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<GetConsistencyProofResponse>, Status> {
        principal(&request)?;
        let request = request.into_inner();
        let signed = self.signed().await?;
        within_signed("new_size", request.new_size, signed.size)?;
        if request.old_size > request.new_size {
            return Err(Status::invalid_argument(format!(
                "old_size {} is larger than new_size {}",
                request.old_size, request.new_size
            )));
        }
        let hashes = crate::transparency::consistency_proof(self.store.as_ref(), request.old_size, request.new_size)
            .await
            .map_err(proof_status)?;
        Ok(Response::new(GetConsistencyProofResponse {
            old_size: request.old_size,
            new_size: request.new_size,
            hashes: hashes.iter().map(|hash| hash.to_vec()).collect(),
        }))
    }

    type ExportEntriesStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ExportEntriesResponse, Status>> + Send + 'static>>;

    async fn export_entries(
        &self,
        request: Request<ExportEntriesRequest>,
    ) -> Result<Response<Self::ExportEntriesStream>, Status> {
        principal(&request)?;
        let request = request.into_inner();
        let signed = self.signed().await?;
        within_signed("end", request.end, signed.size)?;
        if request.start >= request.end {
            return Err(Status::invalid_argument(format!(
                "start {} is not below end {}",
                request.start, request.end
            )));
        }
        let store = Arc::clone(&self.store);
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut start = request.start;
            while start < request.end {
                let end = request.end.min(start.saturating_add(EXPORT_CHUNK));
                let message = match store.entries(start, end).await {
                    Ok(entries) if entries.len() as u64 == end - start => Ok(ExportEntriesResponse { start, entries }),
                    Ok(_) => Err(Status::internal("the CA's log store is inconsistent; export stopped")),
                    Err(error) => Err(store_status(error)),
                };
                let failed = message.is_err();
                // A closed receiver means the caller went away: stop reading.
                if sender.send(message).await.is_err() || failed {
                    return;
                }
                start = end;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        ))))
    }
}
