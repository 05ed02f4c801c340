#!/bin/sh
# Guest payload: the kernel's hmm-tests under one configuration, named by
# the file `config` beside it ("THP FS": THP `always` or `never`, the file
# tests' /tmp on `tmpfs` or on `dax`). One boot per configuration, so an
# oops in one run cannot leak into the next. The run is framed by
# `=== run THP FS begin/end` lines for the host to cut out.
read -r thp fs <config
echo "$thp" >/sys/kernel/mm/transparent_hugepage/enabled
if [ "$fs" = dax ]; then
    # hmm-tests creates its files with O_TMPFILE in /tmp: put a directory
    # of the fs-dax mount there.
    if ! grep -q " /mnt/dax " /proc/mounts; then
        echo "=== no DAX mount: the $thp dax run is missing"
        exit 0
    fi
    mount --bind /mnt/dax/tmp /tmp
fi
echo "=== run $thp $fs begin"
./hmm-tests 2>&1
echo "=== run $thp $fs end (exit $?)"
