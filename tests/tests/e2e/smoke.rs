//! A first end-to-end pass over the main write and read routes on both stores.

use crate::support::{Backend, TestRegistry};
use registry_api::{InstanceSpec, Status};

both_stores!(
    register_heartbeat_list_deregister,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let api = &registry.api;
        let mut spec = InstanceSpec::new("http://10.0.0.1:4040");
        spec.tags = vec!["v1".into()];
        let first = api.register("sum", "sum-1", &spec).await.expect("register");
        assert!(first.created);
        assert_eq!(first.instance.status, Status::Passing);
        let again = api.register("sum", "sum-1", &spec).await.expect("replace");
        assert!(!again.created);
        let beat = api.heartbeat("sum", "sum-1").await.expect("heartbeat");
        assert_eq!(beat.status, Status::Passing);
        let list = api.services().await.expect("services");
        assert_eq!(list.services.len(), 1);
        assert_eq!(list.services[0].passing, 1);
        let one = api.service("sum", None).await.expect("service");
        assert_eq!(one.instances.len(), 1);
        assert_eq!(one.index, 1, "the identical replacement appended nothing");
        api.deregister("sum", "sum-1").await.expect("deregister");
        let err = api.deregister("sum", "sum-1").await.expect_err("gone");
        assert_eq!(err.status(), Some(404));
        registry.stop().await;
    }
);
