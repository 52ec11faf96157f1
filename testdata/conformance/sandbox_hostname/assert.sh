test "$(cat /hostname)" = rbuild-test-host
grep -q "127.0.0.1.*rbuild-test-host" /hosts
