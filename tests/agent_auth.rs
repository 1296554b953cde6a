//! No call is served without the token: a missing or wrong one is refused and changes nothing.

use multitenant::auth::BearerToken;
use multitenant::proto::v1::agent_client::AgentClient;
use multitenant::proto::v1::{
    DoctorRequest, GetRunRequest, InfoRequest, StartRunRequest, StopRunRequest, StreamEventsRequest,
};
use tonic::Code;

use crate::support::{test_token, InProcessAgent};

const CONFIG: &str = "name: auth\nworkloads:\n  w: {arrival: {kind: constant, rate: 1}, data: {prompt_tokens: 4, output_tokens: 4}, duration: 1s}\nnodes:\n  - {name: n, tenants: [{name: a, engine: {kind: simulated}, workload: w}]}\n";

/// `req`, carrying `token` if there is one.
fn with<T>(token: Option<&BearerToken>, req: T) -> tonic::Request<T> {
    match token {
        Some(t) => t.attach(tonic::Request::new(req)).expect("attach"),
        None => tonic::Request::new(req),
    }
}

#[tokio::test]
async fn calls_without_the_right_token_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = InProcessAgent::start(tmp.path()).await;
    let start = || StartRunRequest {
        run_id: "r1".into(),
        config_yaml: CONFIG.into(),
        node: "n".into(),
    };

    let mut anonymous = AgentClient::connect(agent.url.clone())
        .await
        .expect("connect");
    let wrong = BearerToken::new("not-the-agent-token-0123456789").expect("token");
    for token in [None, Some(&wrong)] {
        let refused = [
            anonymous
                .info(with(token, InfoRequest {}))
                .await
                .map(|_| ()),
            anonymous
                .doctor(with(
                    token,
                    DoctorRequest {
                        config_yaml: CONFIG.into(),
                        node: "n".into(),
                    },
                ))
                .await
                .map(|_| ()),
            anonymous.start_run(with(token, start())).await.map(|_| ()),
            anonymous
                .get_run(with(
                    token,
                    GetRunRequest {
                        run_id: "r1".into(),
                    },
                ))
                .await
                .map(|_| ()),
            anonymous
                .stop_run(with(
                    token,
                    StopRunRequest {
                        run_id: "r1".into(),
                    },
                ))
                .await
                .map(|_| ()),
            anonymous
                .stream_events(with(
                    token,
                    StreamEventsRequest {
                        run_id: "r1".into(),
                        cursors: vec![],
                    },
                ))
                .await
                .map(|_| ()),
        ];
        for (i, result) in refused.into_iter().enumerate() {
            let status = result.expect_err("must be refused");
            assert_eq!(status.code(), Code::Unauthenticated, "call {i}: {status:?}");
        }
    }
    assert!(
        std::fs::read_dir(tmp.path()).expect("dir").next().is_none(),
        "a refused StartRun wrote something"
    );

    let token = test_token();
    let status = anonymous
        .get_run(
            token
                .attach(tonic::Request::new(GetRunRequest {
                    run_id: "r1".into(),
                }))
                .expect("attach"),
        )
        .await
        .expect_err("no such run");
    assert_eq!(
        status.code(),
        Code::NotFound,
        "refused calls must not have created the run"
    );
    let info = anonymous
        .info(
            token
                .attach(tonic::Request::new(InfoRequest {}))
                .expect("attach"),
        )
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.gpu_unavailable_reason, "tests run without a GPU");
    assert_eq!(
        info.engine_kinds,
        ["simulated", "vllm", "external", "adapter"],
        "every kind a config may name"
    );
    agent.stop().await;
}
