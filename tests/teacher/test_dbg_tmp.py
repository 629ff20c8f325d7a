from tests.teacher.test_pipeline import *  # noqa
def test_dbg(killed_and_resumed):
    server, killed_at = killed_and_resumed["server"], killed_and_resumed["killed_at"]
    from collections import Counter
    c = Counter(s.key for s in server.log if s.answered_at)
    for key, n in c.items():
        if n > 1:
            for i, s in enumerate(server.log):
                if s.key == key:
                    print(i, s.fault, round(s.received_at - killed_at, 3), s.answered_at and round(s.answered_at - killed_at, 3), s.body["seed"], [m["content"][:80] for m in s.body["messages"][1:]])
    print("sent_before", killed_and_resumed["sent_before"], len(server.log))
    assert False
