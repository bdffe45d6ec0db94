#!/bin/sh
echo "coverage is not supported in the offline emud build" >&2
exit 1
