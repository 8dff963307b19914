from llmd_sdk import contracts


def test_ext_proc_messages_come_from_xds_protos() -> None:
    req = contracts.ext_proc.ProcessingRequest()
    req.request_headers.end_of_stream = True
    assert req.WhichOneof("request") == "request_headers"
    assert contracts.ext_proc.DESCRIPTOR.package == "envoy.service.ext_proc.v3"
    svc = contracts.ext_proc.DESCRIPTOR.services_by_name["ExternalProcessor"]
    assert svc.full_name == contracts.EXT_PROC_SERVICE


def test_kvindex_round_trips_a_score_request() -> None:
    req = contracts.kvindex.ScoreRequest(
        model="m", token_ids=contracts.kvindex.TokenIds(ids=[1, 2, 3]), cache_salt="s"
    )
    back = contracts.kvindex.ScoreRequest.FromString(req.SerializeToString())
    assert back.WhichOneof("input") == "token_ids"
    assert list(back.token_ids.ids) == [1, 2, 3]
    svc = contracts.kvindex.DESCRIPTOR.services_by_name["KVIndex"]
    assert svc.full_name == contracts.KVINDEX_SERVICE
    assert [m.name for m in svc.methods] == ["Score", "Stats"]
