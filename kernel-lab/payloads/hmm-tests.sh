#!/bin/sh
# Guest payload: the kernel's hmm-tests under each configuration the
# comparison covers. Each run is framed by `=== run THP FS begin/end` lines
# so the host can split the console into one TAP file per configuration.
thp=/sys/kernel/mm/transparent_hugepage/enabled
# Every configuration starts from a freshly loaded test_hmm, as a run of
# the selftest on a booted machine does.
run() {
    reload-test-hmm || echo "=== reloading test_hmm failed"
    echo "$1" >$thp
    echo "=== run $1 $2 begin"
    ./hmm-tests 2>&1
    echo "=== run $1 $2 end (exit $?)"
}
for mode in always never; do run $mode tmpfs; done
# hmm-tests creates its files with O_TMPFILE in /tmp: put a directory of
# the fs-dax mount there to run the file tests on DAX.
if grep -q " /mnt/dax " /proc/mounts; then
    mount --bind /mnt/dax/tmp /tmp
    for mode in always never; do run $mode dax; done
    umount /tmp
else
    echo "=== no DAX mount: the dax runs are missing"
fi
