//! graphsim's HTTP test suite, built as one binary (one link on a 2-core machine).

mod support;

// Token endpoint, bearer validation, consent and mailbox states.
mod auth;
// Client assertions: uploaded certificates and federated credentials.
mod assertions;
// The graphsim binary.
mod cli;
// $batch envelopes, limits, dependsOn and per-item throttling.
mod batch;
// Contact folders, contacts CRUD, $select/$filter/$expand, extended properties, paging.
mod contacts;
// Every response kind validated against graph-schemas.json; sample-payloads.json replayed.
mod conformance;
// /_sim/ control surface and the seed generator.
mod control;
// Per-folder contact delta.
mod delta;
// The directory: groups, org contacts, /users/delta, managers, /organization, permissions.
mod directory;
// Injected faults and commit-then-fail.
mod faults;
// Malformed input never crashes the server.
mod robustness;
// The Outlook throttle model.
mod throttle;
// /users directory queries.
mod users;
// Photos: bytes, ImageNotFound, the 4 MB limit and the upload budget.
mod photos;
