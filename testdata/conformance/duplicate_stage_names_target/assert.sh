test "$(cat /f)" = second
