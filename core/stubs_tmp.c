/* TEMP: stubs until the tickets branch merges */
int tls_tickets_share(double l) { (void)l; return 0; }
void tls_tickets_rotate(void) {}
void tls_after_fork(void) {}
