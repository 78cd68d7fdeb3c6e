//! The harness keeps its promise to the shared broker and Redis: a test that fails half-way —
//! its pipeline running, an event answered, messages and keys written — still leaves no queue
//! and no key behind, because dropping its `TestApp` while unwinding removes them.
use crate::common::*;
use shared::topology::Topology;
use testkit::{keys, queue_exists, store_on};

#[tokio::test]
async fn a_test_that_panics_leaves_no_queue_and_no_key_behind() {
    let (tell, told) = std::sync::mpsc::channel();
    // The failing "test": its own task, so its panic unwinds through the TestApp's drop.
    let failing = tokio::spawn(async move {
        let app = TestApp::spawn(Options::default()).await;
        let resp = app.send_signed("doomed-1", r#"{"text":"hello"}"#).await;
        assert_eq!(resp.status(), 202);
        app.wait_answers("the answer at the receiver", 1).await;
        let queues = Topology::from_config(&app.config).all_queues();
        let work = Topology::from_config(&app.config).stage_queue(shared::topology::Stage::Work);
        assert!(queue_exists(&work).await, "the work queue exists");
        assert!(!keys(&app.services.store).await.is_empty(), "keys written");
        tell.send((app.prefix.clone(), queues)).expect("tell");
        panic!("this test fails with its pipeline running");
    });
    let failed = failing.await.expect_err("the inner test panicked");
    assert!(failed.is_panic());
    let (prefix, queues) = told.recv().expect("the inner test got as far as its panic");
    assert!(queues.len() > 5, "{queues:?}");
    for q in &queues {
        assert!(!queue_exists(q).await, "{q} was left on the broker");
    }
    // A fresh store on the dead test's prefix: nothing under it.
    let store = store_on(&prefix, 1);
    assert_eq!(keys(&store).await, Vec::<String>::new(), "keys of {prefix}");
}
