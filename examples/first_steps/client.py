"""What a user's code does with the cached tasks; prints one JSON object."""

import json
import threading
import uuid

import redis

import core
import workers
from tasks import add, app, square, whoami

raw = redis.Redis.from_url(app.conf.result_backend)
report = {"core": core.MARKER, "workers": workers.MARKER}
counter = f"count:{uuid.uuid4().hex}"
first = square.submit(7, counter)
report["first"] = [first.source, first.get(timeout=60)]
again = square.submit(7, counter)
report["again"] = [again.source, again.task_id, again.get(timeout=10)]

cold = f"count:{uuid.uuid4().hex}"
barrier = threading.Barrier(40)
answers = []
errors = []


def submit() -> None:
    barrier.wait()
    try:
        answers.append(square.submit(11, cold).get(timeout=60))
    except Exception as exc:  # reported, so the test shows what failed
        errors.append(repr(exc))


threads = [threading.Thread(target=submit) for _ in range(40)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(90)
report["stampede"] = {
    "answers": sorted(set(answers)),
    "count": len(answers),
    "errors": errors[:3],
    "computations": int(raw.get(cold) or 0),
}
bound = whoami.submit(5)
report["bound"] = bound.get(timeout=60)
report["bound_again"] = whoami.submit(5).source
square.invalidate(7, counter)
after = square.submit(7, counter)
report["after_invalidate"] = [after.source, after.get(timeout=60), int(raw.get(counter) or 0)]
report["plain"] = add.delay(2, 3).get(timeout=60)
report["conf"] = {
    "prefetch": app.conf.worker_prefetch_multiplier,
    "queue": app.conf.task_default_queue,
    "visibility_timeout": app.conf.broker_transport_options["visibility_timeout"],
    "maintenance_registered": "tiercel.maintenance.sweep" in app.tasks,
    "beat": sorted(app.conf.beat_schedule),
}
print(json.dumps(report))
