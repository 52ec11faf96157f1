test "$(cat /check)" = content
