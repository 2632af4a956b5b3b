// wire_send.h: send one wire message on a transport connection.
#ifndef AA_WIRE_SEND_H
#define AA_WIRE_SEND_H

#include "transport.h"
#include "wire.h"

// aai_wire_send encodes m straight into c's send buffer: 0, or the
// transport's error (AA_ECLOSED, AA_EMSGSIZE) or AA_EINVAL for a message
// that breaks the protocol's rules.
int aai_wire_send(aai_conn *c, const aai_wire_msg *m);

#endif // AA_WIRE_SEND_H
