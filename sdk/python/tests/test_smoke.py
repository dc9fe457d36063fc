from conftest import BrokerProcess

import leash


def test_smoke(broker: BrokerProcess) -> None:
    with leash.Broker(broker.url, broker.credential("research-bot")) as b:
        with b.start_task("smoke", ["notes.search"], ttl_seconds=60) as task:
            print(repr(task))
            print(task.call("notes.search", {"query": "biscuit"}))
            print(task.tools())
            child = task.attenuate(['check if call("notes.search")'])
            sub = leash.Task.from_token(broker.url, child)
            print(sub.call("notes.search", {"query": "leash"}))
    print(broker.upstream_calls())
