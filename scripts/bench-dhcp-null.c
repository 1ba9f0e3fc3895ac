/* The DHCP benchmark's floor (scripts/bench-dhcp.sh, BENCH_SERVERS=null): a responder that
 * answers perfdhcp's DORA with no lease state at all, to measure what the client and the two
 * cores leave for a server. It answers each DISCOVER with an OFFER and each REQUEST with an
 * ACK for an address derived from the client's MAC (distinct for perfdhcp's clients), to the
 * relay that sent it (giaddr, port 67), one blocking recvfrom and sendto per packet.
 *   cc -O2 -o dhcp-null scripts/bench-dhcp-null.c && dhcp-null SERVER_IP
 * Not a DHCP server: no pool, no lease, no validation beyond what the reply needs. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SERVER_IP\n", argv[0]);
    return 2;
  }
  struct in_addr server;
  if (inet_pton(AF_INET, argv[1], &server) != 1) {
    fprintf(stderr, "not an IPv4 address: %s\n", argv[1]);
    return 2;
  }
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  int size = 4 << 20, one = 1;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
  setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(67), .sin_addr = server};
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    perror("bind");
    return 1;
  }
  unsigned char in[1500], out[300];
  for (;;) {
    ssize_t n = recv(fd, in, sizeof in, 0);
    if (n < 240 || in[0] != 1 || memcmp(in + 236, "\x63\x82\x53\x63", 4) != 0) continue;
    int type = 0;
    for (ssize_t i = 240; i + 1 < n && in[i] != 255;) {
      if (in[i] == 0) { i++; continue; }
      if (in[i] == 53 && in[i + 1] == 1 && i + 2 < n) type = in[i + 2];
      i += 2 + in[i + 1];
    }
    if (type != 1 && type != 3) continue;
    memset(out, 0, sizeof out);
    memcpy(out, in, 240);
    out[0] = 2;
    /* yiaddr: 10.70.1.0 plus the MAC's last three bytes, modulo the pool's size */
    unsigned int k = ((unsigned)in[28 + 3] << 16 | (unsigned)in[28 + 4] << 8 | in[28 + 5]) % 130815;
    unsigned int y = (10u << 24 | 70u << 16 | 1u << 8) + k;
    out[16] = y >> 24; out[17] = y >> 16; out[18] = y >> 8; out[19] = y;
    memset(out + 12, 0, 4);  /* ciaddr */
    unsigned char *o = out + 240;
    *o++ = 53; *o++ = 1; *o++ = type == 1 ? 2 : 5;
    *o++ = 54; *o++ = 4; memcpy(o, &server, 4); o += 4;
    *o++ = 51; *o++ = 4; *o++ = 0; *o++ = 0; *o++ = 0x0e; *o++ = 0x10;
    *o++ = 1; *o++ = 4; *o++ = 255; *o++ = 254; *o++ = 0; *o++ = 0;
    *o++ = 255;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(67)};
    memcpy(&to.sin_addr, in + 24, 4);  /* giaddr */
    if (to.sin_addr.s_addr == 0) {
      to.sin_port = htons(68);
      to.sin_addr.s_addr = INADDR_BROADCAST;
    }
    sendto(fd, out, sizeof out, 0, (struct sockaddr *)&to, sizeof to);
  }
}
