// wire_send.h: send one wire message on a transport connection.
#ifndef AA_WIRE_SEND_H
#define AA_WIRE_SEND_H

#include "transport.h"
#include "wire.h"

// aai_wire_send encodes m straight into c's send buffer: 0, AA_EMSGSIZE
// when the encoding exceeds limit (0 = no limit of its own), AA_EINVAL for
// a message that breaks the protocol's rules, or the transport's error
// (AA_ECLOSED, AA_EMSGSIZE).
int aai_wire_send(aai_conn *c, const aai_wire_msg *m, size_t limit);

#endif // AA_WIRE_SEND_H
