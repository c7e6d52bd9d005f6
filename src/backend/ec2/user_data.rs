//! The user data a launch passes to the instance, read from the Secret the
//! spec names. Its content is never logged.

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::Ec2Backend;
use crate::api::{Ec2Spec, Workspace};
use crate::backend::BackendError;

impl Ec2Backend {
    /// Reads `spec.ec2.userData`, base64-encoded for RunInstances. A Secret
    /// or key that does not exist (yet) is `UserDataNotFound`, naming both;
    /// any other failure to read it is retried.
    pub(super) async fn user_data(
        &self,
        ws: &Workspace,
        spec: &Ec2Spec,
    ) -> Result<Option<String>, BackendError> {
        let Some(r) = &spec.user_data else {
            return Ok(None);
        };
        let key = r.key.as_deref().unwrap_or("userData");
        let namespace = ws.metadata.namespace.as_deref().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), namespace);
        let secret = secrets.get_opt(&r.name).await.map_err(|e| {
            BackendError::InputUnreadable(format!(
                "reading Secret {} for spec.ec2.userData: {e}",
                r.name
            ))
        })?;
        let missing = |message: String| BackendError::InputMissing {
            reason: "UserDataNotFound",
            message,
        };
        let Some(secret) = secret else {
            return Err(missing(format!(
                "Secret {} does not exist; spec.ec2.userData wants its key {key}, and the launch waits for it",
                r.name
            )));
        };
        let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) else {
            return Err(missing(format!(
                "Secret {} has no key {key} for spec.ec2.userData; the launch waits for it",
                r.name
            )));
        };
        Ok(Some(
            base64::engine::general_purpose::STANDARD.encode(&bytes.0),
        ))
    }
}
