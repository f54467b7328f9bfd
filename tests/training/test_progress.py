"""Plain progress lines at most ``log.progress_interval`` apart however long a step takes, and a whole-run ETA
beside the pass's (issue 18 item 6). Fake clocks (``tick`` drives what the heartbeat thread does), one short
real-time check of the thread itself."""
import io
import time

from anodev2.training.progress import Progress, run_eta


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t



def test_a_long_step_does_not_hold_the_next_line_back():
    """Steps of 12 s and interval 30 s: lines come only at updates in the old scheme (up to 36 s apart); with
    the heartbeat's clock checks (here every second of fake time, as the thread's interval / 4) never > 30 s."""
    clock, out = FakeClock(), io.StringIO()
    bar = Progress("epoch 1/2 train", 1000, interval=30.0, stream=out, tty=False, clock=clock)
    stamps = []
    for _ in range(20):  # 20 steps of 12 s, the clock checked every second in between
        for _ in range(12):
            clock.t += 1.0
            n = len(out.getvalue().splitlines())
            bar.tick()
            if len(out.getvalue().splitlines()) > n:
                stamps.append(clock.t)
        n = len(out.getvalue().splitlines())
        bar.update(8, 2.0)
        if len(out.getvalue().splitlines()) > n:
            stamps.append(clock.t)
    bar.close()
    gaps = [b - a for a, b in zip([1000.0] + stamps, stamps)]
    assert stamps and max(gaps) <= 30.0, gaps
    assert gaps == [30.0] * len(gaps)  # exactly at the interval: the tick, not the 12 s step grid
    # a closed pass never writes again
    n = len(out.getvalue().splitlines())
    clock.t += 100
    bar.tick()
    assert len(out.getvalue().splitlines()) == n


def test_the_next_pass_continues_the_interval_of_the_previous_one():
    clock, out = FakeClock(), io.StringIO()
    train = Progress("epoch 1/2 train", 1000, interval=30.0, stream=out, tty=False, clock=clock)
    clock.t += 25
    train.tick()
    clock.t += 5
    train.tick()  # 30 s: a line
    clock.t += 20
    train.close()
    test = Progress("epoch 1/2 test", 1000, interval=30.0, stream=out, tty=False, clock=clock)
    clock.t += 9
    test.tick()
    assert len(out.getvalue().splitlines()) == 1
    clock.t += 1  # 30 s after the training pass's last line, 10 s into the evaluation
    test.tick()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 1/2 test 0/1000 (0%)"), lines
    test.close()


def test_the_heartbeat_thread_writes_during_a_long_step():
    out = io.StringIO()
    bar = Progress("epoch 1/1 train", 10, interval=0.2, stream=out, tty=False)  # real clock: heartbeat on
    bar.update(4, 1.0)  # 10 %: a line
    time.sleep(0.75)  # one "long step": the thread checks every 0.05 s
    lines = out.getvalue().splitlines()
    bar.close()
    assert 3 <= len(lines) <= 5 and all(line.startswith("epoch 1/1 train 1/10 (10%)") for line in lines), lines
    assert bar._thread is None  # joined
    n = len(out.getvalue().splitlines())
    time.sleep(0.3)
    assert len(out.getvalue().splitlines()) == n  # silent after close


def test_run_eta_beside_the_pass_eta():
    # epoch 3 (0-based 2) of 10, two measured epochs of 100 s and 120 s: 7 later epochs at 110 s
    eta = run_eta([{"epoch_time": 100.0}, {"epoch_time": 120.0}], epoch=2, epochs=10)
    assert eta(40.0, 90.0) == 40.0 + 7 * 110.0
    # nothing measured yet: the projected pass (+ what the epoch spent before it, for an evaluation pass)
    assert run_eta([], epoch=0, epochs=3)(30.0, 50.0) == 30.0 + 2 * 50.0
    assert run_eta([], epoch=0, epochs=3, spent=50.0)(4.0, 10.0) == 4.0 + 2 * 60.0
    assert run_eta([{"epoch_time": 1.0}], epoch=9, epochs=10)(5.0, 9.0) == 5.0  # the last epoch
    clock, out = FakeClock(), io.StringIO()
    bar = Progress("epoch 3/10 train", 50, interval=30.0, stream=out, tty=False, clock=clock,
                   run_eta=run_eta([{"epoch_time": 100.0}, {"epoch_time": 120.0}], 2, 10))
    for _ in range(5):
        clock.t += 2.0
        bar.update(8, 2.0)
    bar.close()
    # 5 of 50 steps in 10 s: pass ETA 90 s, run ETA 90 + 7 * 110 = 860 s
    assert out.getvalue().splitlines()[0] == ("epoch 3/10 train 5/50 (10%) loss 2.0000 4 img/s elapsed 0:00:10 "
                                              "ETA 0:01:30 run ETA 0:14:20")
