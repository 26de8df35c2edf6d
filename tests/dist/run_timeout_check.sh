#!/bin/sh
# Runs the MPI time-out scenario (the arguments: mpirun ... mpi_tests
# --timeout-check) and passes when rank 0 reported the sleeping rank in time,
# no rank reported a failed check, and the job then ended with a non-zero
# status.
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
case "$out" in
  *"check FAILED"*) echo "run_timeout_check: a rank reported a failure"; exit 1 ;;
  *"timeout check passed"*) ;;
  *) echo "run_timeout_check: rank 0 did not report the sleeping rank in time"; exit 1 ;;
esac
if [ "$rc" -eq 0 ]; then
  echo "run_timeout_check: the job exited 0; a time-out must end it with an error"
  exit 1
fi
echo "run_timeout_check: job ended with status $rc as expected"
