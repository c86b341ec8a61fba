//! The original registry's routes (`POST /service`, `GET /service`), kept so the seed's
//! Node services and client work unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /service` body: `{"service":{"name","uri","online"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SeedRegistration {
    pub service: SeedServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SeedServiceSpec {
    pub name: String,
    pub uri: String,
    /// Accepted for compatibility; the registry decides by polling `/status`.
    #[serde(default)]
    pub online: Option<bool>,
}

/// `GET /service?service=NAME` answer, and each value of the `GET /service` map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SeedService {
    pub name: String,
    pub uri: String,
    pub online: bool,
}

/// `GET /service` answer: one instance when `service` is given, else the map by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SeedLookup {
    One(SeedService),
    All(BTreeMap<String, SeedService>),
}
