#!/bin/sh
# Starts a small process tree and exits, leaving it behind: three background
# children, one of which starts two grandchildren of its own. Under a plain
# `sh examples/spawn-children.sh` the tree outlives the script; under
# `osl-pg run -- sh examples/spawn-children.sh` it is killed and named.
echo "leader $$ starting children"
sleep 300 &
sleep 301 &
sh -c 'sleep 302 & sleep 303 & wait' &
sleep 0.2
echo "leader $$ exits, leaving its children running"
