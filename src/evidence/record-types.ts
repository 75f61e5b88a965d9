/**
 * Which record types make an event on their own. Userspace programs (PAM, sshd, useradd, systemd, auditd
 * itself...) send one message per event: the kernel gives it its own serial and nothing else shares it
 * (libaudit's AUDIT_FIRST_USER_MSG..AUDIT_LAST_DAEMON = 1100..1299 and AUDIT_FIRST_USER_MSG2..AUDIT_LAST_USER_MSG2
 * = 2100..2999). Kernel records (1000..1099 such as LOGIN, 1300.., AVC, ANOM_PROMISCUOUS...) can share their serial
 * with a SYSCALL record and are grouped by serial.
 */

const USERSPACE_PREFIXES = ['USER_', 'CRED_', 'DAEMON_', 'RESP_', 'CRYPTO_', 'VIRT_', 'ANOM_LOGIN_'];

/** Names in 1100..1299 and 2100..2999 that the prefixes above do not cover (libaudit's audit-records.h). */
const USERSPACE_NAMES = new Set([
  'USER',
  'USYS_CONFIG',
  'ADD_USER',
  'DEL_USER',
  'ADD_GROUP',
  'DEL_GROUP',
  'DAC_CHECK',
  'CHGRP_ID',
  'TEST',
  'TRUSTED_APP',
  'CHUSER_ID',
  'GRP_AUTH',
  'SYSTEM_BOOT',
  'SYSTEM_SHUTDOWN',
  'SYSTEM_RUNLEVEL',
  'SERVICE_START',
  'SERVICE_STOP',
  'GRP_MGMT',
  'GRP_CHAUTHTOK',
  'MAC_CHECK',
  'ACCT_LOCK',
  'ACCT_UNLOCK',
  'SOFTWARE_UPDATE',
  'ANOM_MAX_DAC',
  'ANOM_MAX_MAC',
  'ANOM_AMTU_FAIL',
  'ANOM_RBAC_FAIL',
  'ANOM_RBAC_INTEGRITY_FAIL',
  'ANOM_CRYPTO_FAIL',
  'ANOM_ACCESS_FS',
  'ANOM_EXEC',
  'ANOM_MK_EXEC',
  'ANOM_ADD_ACCT',
  'ANOM_DEL_ACCT',
  'ANOM_MOD_ACCT',
  'ANOM_ROOT_TRANS',
  'ANOM_ORIGIN_FAILURES',
  'ANOM_SESSION',
  'ROLE_ASSIGN',
  'ROLE_REMOVE',
  'ROLE_MODIFY',
  'LABEL_OVERRIDE',
  'LABEL_LEVEL_CHANGE',
  'DEV_ALLOC',
  'DEV_DEALLOC',
  'FS_RELABEL',
]);

export function isSingleRecordType(type: string): boolean {
  if (type.startsWith('UNKNOWN[')) {
    const n = Number(type.slice(8, -1));
    return (n >= 1100 && n <= 1299) || (n >= 2100 && n <= 2999);
  }
  if (USERSPACE_NAMES.has(type)) return true;
  for (const prefix of USERSPACE_PREFIXES) if (type.startsWith(prefix)) return true;
  return false;
}
