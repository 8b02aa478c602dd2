//! What a Graph operation answers, before HTTP framing.
//!
//! The same value is written to the wire for a plain request and embedded as an item of a `$batch`
//! response, so handlers never touch HTTP types.

use serde_json::{json, Value};

/// Status, extra headers and body of one operation's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers beyond the common Graph set (e.g. `Retry-After`, `WWW-Authenticate`, `Location`).
    pub headers: Vec<(String, String)>,
    /// JSON body; `None` for 204 and empty-bodied errors.
    pub body: Option<Value>,
    /// The body is an OAuth (token endpoint) body, not a Graph one: plain `application/json`.
    pub plain_json: bool,
    /// A body already serialised; `body` is `None` then.
    pub raw: Option<Serialized>,
}

/// A body sent as it is.
#[derive(Debug, Clone)]
pub enum Serialized {
    /// JSON text (contacts rendered straight from the store, [`crate::contact_json`]).
    Json(Vec<u8>),
    /// Bytes that are not JSON (a photo) and their content type.
    Other(Vec<u8>, String),
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(body),
            plain_json: false,
            raw: None,
        }
    }

    /// A JSON answer serialised from `body` now; a body that cannot be serialised is a 500, as Graph answers an
    /// error of its own.
    pub fn serialized(status: u16, body: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(body) {
            Ok(text) => Self {
                raw: Some(Serialized::Json(text)),
                ..Self::empty(status)
            },
            Err(e) => graph_error(500, "generalException", &format!("rendering failed: {e}")),
        }
    }

    /// Whether the answer has a JSON body.
    pub fn has_json_body(&self) -> bool {
        self.body.is_some() || matches!(self.raw, Some(Serialized::Json(_)))
    }

    /// A binary answer (`GET …/photo/$value`).
    pub fn bytes(status: u16, bytes: Vec<u8>, content_type: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
            plain_json: false,
            raw: Some(Serialized::Other(bytes, content_type.to_owned())),
        }
    }

    /// An answer without body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
            plain_json: false,
            raw: None,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `error.code` of a Graph error body, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.body.as_ref()?.get("error")?.get("code")?.as_str()
    }

    /// Fills `innerError` with the request's ids and the current date, as Graph does.
    pub fn stamp_inner_error(&mut self, request_id: &str, client_request_id: &str, date: &str) {
        if let Some(Value::Object(err)) = self.body.as_mut().and_then(|b| b.get_mut("error")) {
            if err.get("innerError").is_some_and(|v| v.is_null()) {
                err.insert(
                    "innerError".into(),
                    json!({"date": date, "request-id": request_id, "client-request-id": client_request_id}),
                );
            }
        }
    }
}

/// A Graph error: `{"error":{"code","message","innerError":{...}}}`; `innerError` is filled in when sent.
pub fn graph_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {"code": code, "message": message, "innerError": null}}),
    )
}

/// Graph errors the simulator answers with, named for their cause.
pub mod errors {
    use super::{graph_error, Reply};

    /// The value of `WWW-Authenticate` on Graph 401s.
    pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"";

    /// 401 InvalidAuthenticationToken with `WWW-Authenticate`.
    pub fn unauthenticated(message: &str) -> Reply {
        graph_error(401, "InvalidAuthenticationToken", message)
            .with_header("WWW-Authenticate", WWW_AUTHENTICATE)
    }

    /// 400 for a path Graph does not know.
    pub fn unknown_segment(segment: &str) -> Reply {
        graph_error(
            400,
            "BadRequest",
            &format!("Resource not found for the segment '{segment}'."),
        )
    }

    /// 405 for a verb a resource does not support.
    pub fn method_not_allowed() -> Reply {
        graph_error(
            405,
            "Request_BadRequest",
            "Specified HTTP method is not allowed for the request target.",
        )
    }

    /// 404 for a user id/UPN the tenant does not have (Outlook paths).
    pub fn invalid_user(user: &str) -> Reply {
        graph_error(
            404,
            "ErrorInvalidUser",
            &format!("The requested user '{user}' is invalid."),
        )
    }

    /// 404 for an Outlook item or folder that does not exist.
    pub fn item_not_found() -> Reply {
        graph_error(
            404,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }

    /// 400 for an Outlook id that cannot be decoded.
    pub fn id_malformed() -> Reply {
        graph_error(400, "ErrorInvalidIdMalformed", "Id is malformed.")
    }

    /// 404 for a user without an Exchange Online mailbox.
    pub fn mailbox_not_enabled() -> Reply {
        graph_error(
            404,
            "MailboxNotEnabledForRESTAPI",
            "REST API is not yet supported for this mailbox.",
        )
    }

    /// 403 for a mailbox excluded by an application access policy.
    pub fn access_policy_denied() -> Reply {
        graph_error(403, "ErrorAccessDenied", "Access to OData is disabled.")
    }

    /// 403 for an app without consented Contacts permission.
    pub fn mailbox_access_denied() -> Reply {
        graph_error(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
    }

    /// 403 for an app without consented directory permission.
    pub fn directory_access_denied() -> Reply {
        graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    }

    /// 400 for an unsupported Outlook `$filter`.
    pub fn outlook_bad_filter() -> Reply {
        graph_error(
            400,
            "ErrorInvalidUrlQueryFilter",
            "The query filter contains one or more invalid nodes.",
        )
    }

    /// 400 for a `$filter` that does not parse.
    pub fn invalid_filter_clause() -> Reply {
        graph_error(400, "BadRequest", "Invalid filter clause")
    }

    /// 400 for a body that is not JSON.
    pub fn unreadable_body() -> Reply {
        graph_error(
            400,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        )
    }

    /// 400 for a body property the entity type does not have.
    pub fn unknown_property(property: &str, type_name: &str) -> Reply {
        graph_error(
            400,
            "RequestBodyRead",
            &format!(
                "The property '{property}' does not exist on type '{type_name}'. Make sure to only use property names that are defined by the type or mark the type as open type."
            ),
        )
    }

    /// 400 for a multi-value contact property over Exchange's limit (the message as Graph words it; its error code is
    /// not in the public report, `ErrorInvalidArgument` stands in).
    pub fn too_many_entries(property: &str, entries: usize, max: usize) -> Reply {
        graph_error(
            400,
            "ErrorInvalidArgument",
            &format!(
                "The multi value property {property} has {entries} entries, that exceeds the max allowed value of {max}"
            ),
        )
    }

    /// 400 for a body property of the wrong JSON type.
    pub fn wrong_type(property: &str, expected: &str) -> Reply {
        graph_error(
            400,
            "RequestBodyRead",
            &format!("Cannot convert the literal for property '{property}' to the expected type '{expected}'."),
        )
    }

    /// 400 for an unknown property in `$select`/`$orderby`.
    pub fn unknown_select(property: &str, type_name: &str) -> Reply {
        graph_error(
            400,
            "RequestBroker--ParseUri",
            &format!("Could not find a property named '{property}' on type '{type_name}'."),
        )
    }

    /// 412 for a stale `If-Match`.
    pub fn change_key_conflict() -> Reply {
        graph_error(
            412,
            "ErrorIrresolvableConflict",
            "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
        )
    }

    /// 409 for a duplicate folder name.
    pub fn folder_exists() -> Reply {
        graph_error(
            409,
            "ErrorFolderExists",
            "A folder with the specified name already exists.",
        )
    }

    /// 413 for a body over the limit.
    pub fn body_too_large(limit: usize) -> Reply {
        graph_error(
            413,
            "RequestEntityTooLarge",
            &format!("The request body exceeds the maximum of {limit} bytes."),
        )
    }

    /// 410 for an invalidated delta token.
    pub fn sync_state_not_found() -> Reply {
        graph_error(
            410,
            "SyncStateNotFound",
            "The sync state generation is not found; generation=1;[highest=2][2].",
        )
    }

    /// 429 for the concurrency cap.
    pub fn mailbox_concurrency() -> Reply {
        graph_error(
            429,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
        )
        .with_header("Retry-After", "1")
        .with_header("Cache-Control", "private")
    }

    /// 404 for a photo that does not exist, as Graph answers for a user or contact without one.
    pub fn image_not_found() -> Reply {
        graph_error(
            404,
            "ImageNotFound",
            "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ImageNotFoundException' was thrown.",
        )
    }

    /// 429 for the per-mailbox upload budget (bytes of PATCH, POST and PUT bodies per window).
    pub fn upload_window(retry_after_secs: u64) -> Reply {
        graph_error(
            429,
            "ApplicationThrottled",
            "Application is over its IncomingBytes limit.",
        )
        .with_header("Retry-After", retry_after_secs.to_string())
        .with_header("Cache-Control", "private")
    }

    /// 429 for Graph's global limit of one app across all tenants (Graph's generic throttling answer).
    pub fn app_limit(retry_after_secs: u64) -> Reply {
        graph_error(429, "TooManyRequests", "Please retry again later.")
            .with_header("Retry-After", retry_after_secs.to_string())
            .with_header("Cache-Control", "private")
    }

    /// 429 for the request window.
    pub fn request_window(retry_after_secs: u64) -> Reply {
        graph_error(
            429,
            "ApplicationThrottled",
            "Application is over its MailboxRequestsPerWindow limit.",
        )
        .with_header("Retry-After", retry_after_secs.to_string())
        .with_header("Cache-Control", "private")
    }
}
