"""Trace ids: time-ordered, random-tailed, never repeated, not even by a forked worker."""
import os

from traces.trace import new_id


def test_ids_are_unique_time_ordered_hex():
    ids = [new_id() for _ in range(50_000)]  # many pools' worth of random bytes
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)
    assert len({i[12:] for i in ids}) == len(ids)


def test_a_forked_child_never_repeats_its_parents_ids():
    new_id()  # the parent's pool holds unread random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, "".join(new_id()[12:] for _ in range(20)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 100_000).decode()
    os.waitpid(pid, 0)
    parent = "".join(new_id()[12:] for _ in range(20))
    def tails(s):
        return {s[k:k + 20] for k in range(0, len(s), 20)}
    assert len(tails(child)) == 20 and not tails(child) & tails(parent)
