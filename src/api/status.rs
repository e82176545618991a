//! The one place where errors become gRPC statuses.

use tonic::{Code, Status};

use crate::manager::ManagerError;

pub fn to_status(err: ManagerError) -> Status {
    let code = match &err {
        ManagerError::InvalidArgument(_) => Code::InvalidArgument,
        ManagerError::AlreadyExists(_) => Code::AlreadyExists,
        ManagerError::NotFound(_) => Code::NotFound,
        ManagerError::Unauthenticated(_) => Code::Unauthenticated,
        ManagerError::PermissionDenied(_) => Code::PermissionDenied,
        ManagerError::ResourceExhausted(_) => Code::ResourceExhausted,
        ManagerError::Unavailable(_) => Code::Unavailable,
        ManagerError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        // gRPC's code for an error raised in another address space.
        ManagerError::Upstream(_) => Code::Unknown,
        ManagerError::Cancelled(_) => Code::Cancelled,
        ManagerError::FailedPrecondition(_) => Code::FailedPrecondition,
        ManagerError::Internal(_) => Code::Internal,
    };
    if code == Code::Internal {
        // Details stay in the log; the caller gets nothing to leak.
        tracing::error!(error = %err, "internal error");
        return Status::internal("internal error; see the daemon's log");
    }
    Status::new(code, err.to_string())
}
