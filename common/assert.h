/* assert.h — SBX_ASSERT(cond): invariants that cannot fail unless sbx has a
 * bug (ops counts, ownership, offsets, legal state moves).
 *
 * Debug and test builds (no NDEBUG) abort with the file, line and the
 * condition, so a broken invariant is found where it broke. Release builds
 * (-DNDEBUG) log the same line at error level and go on: the caller then
 * takes its safe way out, so a production worker never dies of a check. Use
 * it as an expression: `if (!SBX_ASSERT(x)) { safe end; }` works in both.
 */
#ifndef SBX_ASSERT_H
#define SBX_ASSERT_H

void sbx__assert_failed(const char *file, int line, const char *cond);

#define SBX_ASSERT(cond) \
    ((cond) ? 1 : (sbx__assert_failed(__FILE__, __LINE__, #cond), 0))

#endif
