test "$(cat /f)" = second
test "$(cat /copied)" = second
