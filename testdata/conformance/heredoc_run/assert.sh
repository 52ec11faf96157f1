test "$(cat /one)" = one && test "$(cat /two)" = two && test "$(cat /tabbed)" = tabbed && test "$(cat /a)" = first && test "$(cat /b)" = second
