"""One writer per workdir (research/workdir_lock.py): a second run is refused with the
holder's name, a lock left by a dead run is taken over, readers take no lock."""
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from research import workdir_lock
from tests.conftest import REPO, run_main
from tests.test_train import assert_one_line_error

_HOLD_AND_WAIT = textwrap.dedent('''
    import sys, time
    from research import workdir_lock
    with workdir_lock.hold(sys.argv[1]):
      print('held', flush=True)
      time.sleep(600)
''')


def _holder(workdir) -> subprocess.Popen:
  """Another process holding the lock of `workdir` until killed."""
  child = subprocess.Popen([sys.executable, '-c', _HOLD_AND_WAIT, str(workdir)], cwd=REPO,
                           stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == 'held'
  return child


def test_second_holder_is_refused_with_the_holders_name(tmp_path):
  child = _holder(tmp_path)
  try:
    with pytest.raises(workdir_lock.WorkdirLocked) as error:
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    child.kill()
    child.wait()
  message = str(error.value)
  assert '\n' not in message
  assert f'{tmp_path} is in use by another run (host {socket.gethostname()}, PID {child.pid}, ' \
         'since ' in message
  assert f'the lock is {tmp_path}/writer.lock' in message


def test_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
  child = _holder(tmp_path)
  child.send_signal(signal.SIGKILL)  # no chance to release the lock
  child.wait()
  assert json.loads((tmp_path / 'writer.lock').read_text())['pid'] == child.pid
  with workdir_lock.hold(str(tmp_path)):
    assert json.loads((tmp_path / 'writer.lock').read_text())['pid'] == os.getpid()
  [warning] = [r.getMessage() for r in caplog.records if 'taking over' in r.getMessage()]
  assert f'PID {child.pid}' in warning
  assert (tmp_path / 'writer.lock').read_text() == ''  # released: empty, not deleted


def test_released_lock_is_free_and_held_again_without_warning(tmp_path, caplog):
  with workdir_lock.hold(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirLocked):  # also within one process
      with workdir_lock.hold(str(tmp_path)):
        pass
  with workdir_lock.hold(str(tmp_path)):
    pass
  assert not [r for r in caplog.records if 'taking over' in r.getMessage()]


def test_without_flock_the_holders_pid_decides(tmp_path, monkeypatch):
  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, 'No locks available')
  monkeypatch.setattr(fcntl, 'flock', no_flock)
  lock = tmp_path / 'writer.lock'
  host = socket.gethostname()
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True).stdout.strip()
  lock.write_text(json.dumps({'host': host, 'pid': int(dead), 'since': 'then'}))
  with workdir_lock.hold(str(tmp_path)):  # a dead PID on this host: stale
    pass
  for holder in ({'host': host, 'pid': os.getppid()}, {'host': 'elsewhere', 'pid': 1}):
    lock.write_text(json.dumps({**holder, 'since': 'then'}))
    with pytest.raises(workdir_lock.WorkdirLocked, match=f'host {holder["host"]}, PID'):
      with workdir_lock.hold(str(tmp_path)):
        pass


def test_cli_training_is_refused_while_eval_and_generate_read(small_corpus, tmp_path):
  with workdir_lock.hold(str(tmp_path)):  # this test process is "the other run"
    args = ['--config=configs/gpt.py:variant=tiny', f'--workdir={tmp_path}',
            f'--config.data.corpus={small_corpus}', '--config.data.tokenizer.vocab_size=600']
    assert_one_line_error(run_main(*args), f'{tmp_path} is in use by another run',
                          f'PID {os.getpid()}')
    # Readers pass the lock and stop only because there is nothing to read yet.
    for mode in ('--mode=eval', '--mode=generate'):
      assert_one_line_error(run_main(*args, mode, '--prompt=It is'),
                            f'no checkpoint in {tmp_path}/checkpoints; train first')
